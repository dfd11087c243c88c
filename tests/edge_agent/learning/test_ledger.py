"""The privacy ledger in a real box database: reserved before a round runs, composed, never over budget, never twice."""

from __future__ import annotations

import logging

import pytest

from edge_agent.errors import BudgetExceeded, TrainingError
from edge_agent.learning import checkpoint, ledger
from edge_agent.store import open_database
from models.dp import epsilon_of

PLAN = ledger.Plan(noise_multiplier=10.0, max_grad_norm=1.0, sample_rate=0.2, steps=30, delta=1e-5)
STUDIES = [("1.2.3", 1), ("1.2.4", 0)]


@pytest.fixture
def db(tmp_path):
    d = open_database(tmp_path / "box.sqlite3")
    ledger.ensure_generation(d, "0.1.0", 1.0, 1e-5)
    yield d
    d.conn.close()


def test_a_reservation_records_the_composed_epsilon_before_anything_runs(db):
    r = ledger.reserve(db, "0.1.0", PLAN, STUDIES, epsilon_of=epsilon_of)
    assert r.state == "reserved" and r.steps_done == 0 and r.examples == 2
    assert r.epsilon_round == pytest.approx(epsilon_of([(10.0, 0.2, 30)], 1e-5))
    assert ledger.spent(db, "0.1.0") == pytest.approx(r.epsilon_total)
    assert ledger.round_studies(db, r.round_id) == [("1.2.3", 1), ("1.2.4", 0)]
    with pytest.raises(TrainingError, match="already has an open round"):
        ledger.reserve(db, "0.1.0", PLAN, STUDIES, epsilon_of=epsilon_of)


def test_rounds_compose_with_the_rdp_accountant_not_by_adding_epsilons(db):
    a = ledger.reserve(db, "0.1.0", PLAN, STUDIES, epsilon_of=epsilon_of)
    ledger.finish(db, a.round_id, "u1", steps_done=30)
    b = ledger.reserve(db, "0.1.0", PLAN, STUDIES, epsilon_of=epsilon_of)
    assert b.epsilon_total == pytest.approx(epsilon_of([(10.0, 0.2, 30), (10.0, 0.2, 30)], 1e-5))
    assert b.epsilon_total < a.epsilon_round + b.epsilon_round
    assert ledger.spent(db, "0.1.0") == pytest.approx(b.epsilon_total)


def test_a_round_over_budget_is_refused_and_writes_nothing(db):
    greedy = ledger.Plan(0.8, 1.0, 0.5, 200, 1e-5)
    before = db.execute("SELECT count(*) FROM learning_rounds").fetchone()[0]
    with pytest.raises(BudgetExceeded, match="over its budget"):
        ledger.reserve(db, "0.1.0", greedy, STUDIES, epsilon_of=epsilon_of)
    assert db.execute("SELECT count(*) FROM learning_rounds").fetchone()[0] == before
    assert db.execute("SELECT count(*) FROM learning_round_studies").fetchone()[0] == 0
    assert ledger.spent(db, "0.1.0") == 0.0


def test_each_generation_has_its_own_budget(db):
    a = ledger.reserve(db, "0.1.0", PLAN, STUDIES, epsilon_of=epsilon_of)
    ledger.finish(db, a.round_id, "u1", steps_done=30)
    ledger.ensure_generation(db, "0.2.0", 1.0, 1e-5)
    b = ledger.reserve(db, "0.2.0", PLAN, STUDIES, epsilon_of=epsilon_of)
    assert b.epsilon_total == pytest.approx(b.epsilon_round)


def test_only_a_round_that_never_stepped_gives_its_reservation_back(db):
    a = ledger.reserve(db, "0.1.0", PLAN, STUDIES, epsilon_of=epsilon_of)
    ledger.release(db, a.round_id, "no images")
    assert ledger.spent(db, "0.1.0") == 0.0
    b = ledger.reserve(db, "0.1.0", PLAN, STUDIES, epsilon_of=epsilon_of)
    ledger.mark(db, b.round_id, "running", steps_done=0)
    ledger.release(db, b.round_id, "too late: it ran")  # refused silently: the round is running
    assert ledger.get(db, b.round_id).state == "running"
    assert ledger.spent(db, "0.1.0") == pytest.approx(b.epsilon_total)
    ledger.mark(db, b.round_id, "failed", detail="crashed")
    assert ledger.spent(db, "0.1.0") == pytest.approx(b.epsilon_total)  # a failed round that ran still counts


def test_status_shows_budget_spent_left_and_the_last_decision_without_the_seed(db):
    a = ledger.reserve(db, "0.1.0", PLAN, STUDIES, epsilon_of=epsilon_of)
    ledger.record_decision(db, False, ["outside the training window 22:00-06:00"], {"queue_depth": 0})
    s = ledger.status(db, "0.1.0")
    assert s["epsilon_budget"] == 1.0 and s["epsilon_spent"] == pytest.approx(a.epsilon_total)
    assert s["epsilon_left"] == pytest.approx(1.0 - a.epsilon_total)
    assert s["open_round"] == a.round_id and s["rounds"][0]["state"] == "reserved" and "seed" not in s["rounds"][0]
    assert s["last_decision"]["reasons"] == ["outside the training window 22:00-06:00"]


def test_checkpoints_are_atomic_and_a_damaged_one_is_discarded_with_its_reason(tmp_path, caplog):
    path = checkpoint.path_of(tmp_path, "r1")
    checkpoint.write(path, b"weights" * 100)
    assert checkpoint.read(path) == (b"weights" * 100, None)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        body, why = checkpoint.read(path)
    assert body is None and "checksum mismatch" in why and not path.exists()
    assert "Discarding training checkpoint" in caplog.text
    path.write_bytes(checkpoint.MAGIC[:4])
    assert checkpoint.read(path)[1].startswith("not a checkpoint")
    assert checkpoint.read(path) == (None, None)  # gone: nothing to resume from
