"""A training round in a real box: trained, placed once, counted once; paused by screening, killed, resumed, refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.learning import checkpoint, ledger, runner
from edge_agent.queue import JobQueue
from edge_agent.store import open_database

ROUND = {"MAMMO_TRAIN_STEPS": "30"}
SEED = 11
DEADLINE_S = 240  # generous: a busy 2-core machine; the test asserts order of events, never speed


def _wait(pred, what: str, proc: subprocess.Popen | None = None):
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the training process ended ({proc.returncode}) before {what}: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def _rounds(home: Path) -> list[ledger.Round]:
    db = open_database(home / "box.sqlite3")
    try:
        return ledger.rounds(db)
    finally:
        db.conn.close()


def _progress(home: Path, at_least: int):
    rs = _rounds(home)
    return rs[0] if rs and rs[0].steps_done >= at_least else None


def _start(clinic, *args: str) -> subprocess.Popen:
    return subprocess.Popen(clinic.runner_cmd("--seed", str(SEED), *args), env=clinic.process_env(**ROUND), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def _placed(clinic) -> list[Path]:
    return sorted((clinic.home / "test-outbox").glob("*.npz")) if (clinic.home / "test-outbox").exists() else []


def test_a_round_trains_places_one_update_and_records_its_epsilon(reference_round, clinic_template):
    out, update = reference_round["outcome"], reference_round["update"]
    assert out.status == "done" and out.steps_done == 30 and out.update_id == out.round_id
    from sync.update import LocalUpdate

    assert isinstance(update, LocalUpdate) and update.delta.shape == (20258,) and update.delta.dtype == np.float32
    assert update.spec.names[0] == "fuse.1.body.0.0.weight" and update.base_model_version == "0.1.0"
    assert update.epsilon == pytest.approx(out.epsilon_round) and update.delta_dp == 1e-5
    assert update.example_count == out.examples < len(clinic_template.studies)  # the held-back women are not trained on
    assert out.epsilon_spent == pytest.approx(out.epsilon_round) and out.epsilon_spent <= 0.25 + 1e-9
    assert out.gate["decision"] in ("serve", "candidate") and out.gate["n_studies"] + out.examples == len(clinic_template.studies)
    assert set(update.local_metrics) >= {"heldback_studies", "heldback_positive"}


def test_too_few_examples_means_no_round(clinic):
    out = runner.run(clinic.settings(MAMMO_TRAIN_MIN_EXAMPLES="100"), sink=lambda *a: pytest.fail("nothing may be placed"))
    assert out.status == "refused" and any("too few confirmed studies" in r for r in out.reasons)
    assert _rounds(clinic.home) == []
    db = open_database(clinic.home / "box.sqlite3")
    try:
        assert ledger.last_decision(db)["reasons"] == list(out.reasons)
    finally:
        db.conn.close()


def test_a_round_the_budget_cannot_pay_for_does_not_start(clinic):
    out = runner.run(clinic.settings(MAMMO_TRAIN_EPSILON_BUDGET="0.2"), sink=lambda *a: pytest.fail("nothing may be placed"))
    assert out.status == "refused" and any("privacy budget" in r for r in out.reasons)
    assert _rounds(clinic.home) == [] and out.epsilon_spent == 0.0
    # a fixed noise multiplier too small for the budget is refused too, with what it would cost
    out = runner.run(clinic.settings(MAMMO_TRAIN_NOISE_MULTIPLIER="0.5"), sink=lambda *a: pytest.fail("nothing may be placed"))
    assert out.status == "refused" and any("privacy budget" in r for r in out.reasons) and _rounds(clinic.home) == []


def test_killed_mid_round_resumes_from_its_checkpoint_and_counts_its_epsilon_once(clinic, reference_round):
    with _start(clinic, "--force-window") as proc:
        try:
            _wait(lambda: _progress(clinic.home, 10), "the first checkpoint", proc)
            assert os.sched_getscheduler(proc.pid) == os.SCHED_IDLE  # it runs only on CPU time screening leaves
            proc.send_signal(signal.SIGKILL)  # a power cut, as far as the process can tell
            proc.wait(timeout=30)
        finally:
            proc.kill()
    [r] = _rounds(clinic.home)
    assert r.state == "running" and 10 <= r.steps_done < 30
    assert checkpoint.path_of(clinic.home / "learning", r.round_id).exists()
    spent_at_kill = r.epsilon_total
    done = subprocess.run(clinic.runner_cmd("--seed", "999"), env=clinic.process_env(**ROUND), capture_output=True, text=True, timeout=DEADLINE_S)
    out = _last_json(done.stdout)
    assert out["status"] == "done" and out["round_id"] == r.round_id  # the open round, not a new one (its own seed, not 999)
    [after] = _rounds(clinic.home)
    assert after.state == "done" and after.epsilon_total == spent_at_kill
    assert out["epsilon_spent"] == pytest.approx(spent_at_kill)
    [npz] = _placed(clinic)
    np.testing.assert_array_equal(np.load(npz)["delta"], reference_round["update"].delta)  # as if never interrupted
    assert not checkpoint.path_of(clinic.home / "learning", r.round_id).exists()


def test_a_corrupt_checkpoint_is_discarded_and_the_round_restarts_under_the_same_reservation(clinic, reference_round, caplog):
    stop = threading.Event()
    watcher = threading.Thread(target=lambda: (_wait(lambda: _progress(clinic.home, 10), "the first checkpoint"), stop.set()), daemon=True)
    watcher.start()
    out = runner.run(clinic.settings(**ROUND), seed=SEED, stop=stop, sink=lambda *a: pytest.fail("a paused round places nothing"))
    assert out.status == "paused"
    [r] = _rounds(clinic.home)
    path = checkpoint.path_of(clinic.home / "learning", r.round_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))
    placed: list = []
    out = runner.run(clinic.settings(**ROUND), sink=lambda db, home, u: placed.append(u) or u.update_id)
    assert out.status == "done" and out.round_id == r.round_id
    [after] = _rounds(clinic.home)
    assert after.epsilon_total == r.epsilon_total and "checkpoint discarded: checksum mismatch" in after.detail
    assert "Discarding training checkpoint" in caplog.text
    np.testing.assert_array_equal(placed[0].delta, reference_round["update"].delta)


def test_a_new_study_pauses_training_and_the_round_resumes_where_it_stopped(clinic, reference_round):
    with _start(clinic, "--force-window") as proc:
        stdout = _preempt(clinic, proc)
    out = _last_json(stdout)
    assert out["status"] == "done" and out["pauses"] >= 1
    [npz] = _placed(clinic)
    np.testing.assert_array_equal(np.load(npz)["delta"], reference_round["update"].delta)


def _preempt(clinic, proc: subprocess.Popen) -> str:
    db = open_database(clinic.home / "box.sqlite3")
    try:
        _wait(lambda: _progress(clinic.home, 10), "the first checkpoint", proc)
        queue = JobQueue(db)
        queue.enqueue("infer", {"study_uid": clinic.studies[0][0]}, key="study:arrived-mid-round")
        paused = _wait(lambda: next((r for r in _rounds(clinic.home) if r.state == "paused"), None), "the round to pause", proc)
        assert paused.steps_done < 30 and "screening" in paused.detail
        time.sleep(1.5)  # the job is still waiting: training stays paused
        [still] = _rounds(clinic.home)
        assert still.state == "paused" and still.steps_done == paused.steps_done and proc.poll() is None
        job = queue.claim("infer")
        queue.ack(job)  # screened: the queue is empty again
        stdout, _ = proc.communicate(timeout=DEADLINE_S)
        return stdout
    finally:
        proc.kill()
        db.conn.close()


def test_a_second_training_process_does_not_start_a_second_round(clinic):
    lock = runner.RunnerLock(clinic.settings())
    assert lock.acquire()
    try:
        out = runner.run(clinic.settings())
        assert out.status == "busy" and _rounds(clinic.home) == []
    finally:
        lock.release()
