"""The privacy ledger: every round's differential-privacy cost, per model generation, in the box database.

A model generation is one base model version; its budget (epsilon at delta,
default 1.0 at 1e-5) covers every round trained on it, composed with the RDP
accountant (``models.dp.epsilon_of`` over all rounds' ``(noise multiplier,
sampling rate, steps)``), which is tighter than adding epsilons up.

Life of a round (``learning_rounds.state``)::

    reserve ──► reserved ──► running ◄──► paused ──► done
                   │            │                     (update placed)
                   └─ released  └─► failed
                  (nothing ran)

**Reserved before it runs.** :func:`reserve` computes, inside one write
transaction, the composed epsilon the box will have spent once the round has
taken all its planned steps; if that passes the budget it raises
:class:`BudgetExceeded` and writes nothing, else it inserts the round with
that figure. From then on the round counts as spent, whatever happens to
the process: a power cut mid-round cannot lose it, and a resumed round
reuses its row (at most one open round per generation, a unique index), so
it is never counted twice. Counting the planned steps, not the steps taken,
is the conservative side. Only a round released before its first step
(``released``: its images could not be read) gives its reservation back.

The round's studies are fixed at reservation (``learning_round_studies``),
so a round resumed after new confirmations arrived is the same mechanism
with the same sampling rate.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlite_utils

from edge_agent.errors import BudgetExceeded, TrainingError
from edge_agent.store import transaction

COUNTED = ("reserved", "running", "paused", "done", "failed")
OPEN = ("reserved", "running", "paused")
KEEP_DECISIONS = 500

EpsilonOf = Callable[[Sequence[tuple[float, float, int]], float], float]


@dataclass(frozen=True)
class Plan:
    """What a round will do, fixed before it starts."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    delta: float


@dataclass(frozen=True)
class Round:
    round_id: str
    base_model_version: str
    state: str
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    steps_done: int
    delta: float
    epsilon_round: float  # this round alone
    epsilon_total: float  # the generation's composed epsilon once this round has run
    examples: int
    seed: int
    update_id: str | None
    detail: str
    reserved_at: float
    finished_at: float | None

    @property
    def plan(self) -> Plan:
        return Plan(self.noise_multiplier, self.max_grad_norm, self.sample_rate, self.steps, self.delta)

    def public(self) -> dict[str, Any]:
        """For the CLI and console: everything but the seed (which would let someone subtract the noise)."""
        d = asdict(self)
        d.pop("seed")
        return d


_COLS = ("round_id, base_model_version, state, noise_multiplier, max_grad_norm, sample_rate, steps, steps_done, delta, epsilon_round, "
         "epsilon_total, examples, seed, update_id, detail, reserved_at, finished_at")


def _round(r: Sequence[Any]) -> Round:
    return Round(str(r[0]), str(r[1]), str(r[2]), float(r[3]), float(r[4]), float(r[5]), int(r[6]), int(r[7]), float(r[8]), float(r[9]),
                 float(r[10]), int(r[11]), int(r[12]), r[13], str(r[14]), float(r[15]), None if r[16] is None else float(r[16]))


def ensure_generation(db: sqlite_utils.Database, version: str, budget: float, delta: float, now: float | None = None) -> None:
    """Record the generation's budget (the settings' current one: a technician may lower or raise it; spending is never rewritten)."""
    with transaction(db):
        db.execute("INSERT INTO learning_generations (base_model_version, epsilon_budget, delta, created_at) VALUES (?, ?, ?, ?)"
                   " ON CONFLICT (base_model_version) DO UPDATE SET epsilon_budget = excluded.epsilon_budget, delta = excluded.delta",
                   [version, budget, delta, time.time() if now is None else now])


def budget_of(db: sqlite_utils.Database, version: str) -> tuple[float, float] | None:
    row = db.execute("SELECT epsilon_budget, delta FROM learning_generations WHERE base_model_version = ?", [version]).fetchone()
    return None if row is None else (float(row[0]), float(row[1]))


def rounds(db: sqlite_utils.Database, version: str | None = None, limit: int = 100) -> list[Round]:
    where, args = ("WHERE base_model_version = ?", [version]) if version else ("", [])
    return [_round(r) for r in db.execute(f"SELECT {_COLS} FROM learning_rounds {where} ORDER BY reserved_at DESC, rowid DESC LIMIT ?",
                                          [*args, limit]).fetchall()]


def get(db: sqlite_utils.Database, round_id: str) -> Round | None:
    r = db.execute(f"SELECT {_COLS} FROM learning_rounds WHERE round_id = ?", [round_id]).fetchone()
    return None if r is None else _round(r)


def counted_history(db: sqlite_utils.Database, version: str) -> list[tuple[float, float, int]]:
    """The RDP history of every round that counts against the generation's budget (planned steps)."""
    return [(float(s), float(q), int(n)) for s, q, n in db.execute(
        "SELECT noise_multiplier, sample_rate, steps FROM learning_rounds WHERE base_model_version = ? AND state IN (?, ?, ?, ?, ?)"
        " ORDER BY reserved_at, rowid", [version, *COUNTED]).fetchall()]


def spent(db: sqlite_utils.Database, version: str) -> float:
    """The generation's composed epsilon so far (each reservation recorded the total after it; the latest is the largest)."""
    row = db.execute("SELECT max(epsilon_total) FROM learning_rounds WHERE base_model_version = ? AND state IN (?, ?, ?, ?, ?)",
                     [version, *COUNTED]).fetchone()
    return float(row[0] or 0.0)


def open_round(db: sqlite_utils.Database, version: str) -> Round | None:
    r = db.execute(f"SELECT {_COLS} FROM learning_rounds WHERE base_model_version = ? AND state IN (?, ?, ?)",
                   [version, *OPEN]).fetchone()
    return None if r is None else _round(r)


def reserve(db: sqlite_utils.Database, version: str, plan: Plan, studies: Sequence[tuple[str, int]], *,
            epsilon_of: EpsilonOf, seed: int | None = None, now: float | None = None) -> Round:
    """Reserve a round's epsilon and fix its studies, atomically; BudgetExceeded (nothing written) if it would not fit.

    ``epsilon_of`` is ``models.dp.epsilon_of`` (passed in so that reading the
    ledger never loads torch).
    """
    now = time.time() if now is None else now
    if not studies:
        raise TrainingError("A round needs at least one study; nothing was reserved.")
    with transaction(db):
        budget = budget_of(db, version)
        if budget is None:
            raise TrainingError(f"No privacy budget recorded for model {version}; ensure_generation first.")
        if open_round(db, version) is not None:
            raise TrainingError(f"Model {version} already has an open round; resume it (`mammo train run`) instead of starting another.")
        step = (plan.noise_multiplier, plan.sample_rate, plan.steps)
        total = epsilon_of([*counted_history(db, version), step], plan.delta)
        alone = epsilon_of([step], plan.delta)
        if total > budget[0] + 1e-9:
            raise BudgetExceeded(f"A round would bring model {version}'s privacy spending to epsilon {total:.3f}, over its budget "
                                 f"{budget[0]:.3f} (spent {spent(db, version):.3f}); nothing was started. Fix: wait for the next model "
                                 "generation, or (for a smaller round) raise train_noise_multiplier or lower train_steps.")
        rid = uuid.uuid4().hex
        db.execute(f"INSERT INTO learning_rounds ({_COLS}, updated_at) VALUES ({', '.join('?' * 18)})",
                   [rid, version, "reserved", plan.noise_multiplier, plan.max_grad_norm, plan.sample_rate, plan.steps, 0, plan.delta,
                    alone, total, len(studies), secrets.randbits(62) if seed is None else int(seed), None, "", now, None, now])
        db.execute("INSERT INTO learning_round_studies (round_id, study_uid, label) VALUES " + ", ".join("(?, ?, ?)" for _ in studies),
                   [x for uid, label in studies for x in (rid, uid, int(label))])
    got = get(db, rid)
    assert got is not None
    return got


def round_studies(db: sqlite_utils.Database, round_id: str) -> list[tuple[str, int]]:
    return [(str(u), int(label)) for u, label in db.execute(
        "SELECT study_uid, label FROM learning_round_studies WHERE round_id = ? ORDER BY study_uid", [round_id]).fetchall()]


def mark(db: sqlite_utils.Database, round_id: str, state: str, *, steps_done: int | None = None, detail: str | None = None,
         now: float | None = None) -> None:
    """Move an open round to ``state`` (running, paused, failed), recording progress."""
    now = time.time() if now is None else now
    with transaction(db):
        cur = db.execute("UPDATE learning_rounds SET state = ?, steps_done = coalesce(?, steps_done), detail = coalesce(?, detail), updated_at = ?,"
                         " finished_at = CASE WHEN ? = 'failed' THEN ? ELSE finished_at END WHERE round_id = ? AND state IN (?, ?, ?)",
                         [state, steps_done, detail, now, state, now, round_id, *OPEN])
        if cur.rowcount != 1:
            raise TrainingError(f"Round {round_id} is not open; it cannot become {state}.")


def release(db: sqlite_utils.Database, round_id: str, reason: str, now: float | None = None) -> None:
    """Give a reservation back: only for a round whose first step never ran (its state is still 'reserved')."""
    now = time.time() if now is None else now
    with transaction(db):
        db.execute("UPDATE learning_rounds SET state = 'released', detail = ?, updated_at = ?, finished_at = ? WHERE round_id = ? AND state = 'reserved'",
                   [reason, now, now, round_id])


def finish(db: sqlite_utils.Database, round_id: str, update_id: str, *, steps_done: int, detail: str = "", now: float | None = None) -> None:
    """The round ran all its steps and its update is placed."""
    now = time.time() if now is None else now
    with transaction(db):
        db.execute("UPDATE learning_rounds SET state = 'done', update_id = ?, steps_done = ?, detail = ?, updated_at = ?, finished_at = ?"
                   " WHERE round_id = ? AND state IN (?, ?, ?)", [update_id, steps_done, detail, now, now, round_id, *OPEN])


def last_finished_at(db: sqlite_utils.Database, version: str) -> float:
    """When the generation's latest round was reserved (examples confirmed after it are 'new'); 0 without one."""
    row = db.execute("SELECT max(reserved_at) FROM learning_rounds WHERE base_model_version = ? AND state IN (?, ?, ?, ?, ?)",
                     [version, *COUNTED]).fetchone()
    return float(row[0] or 0.0)


def record_decision(db: sqlite_utils.Database, train: bool, reasons: Sequence[str], observed: dict[str, Any], now: float | None = None) -> None:
    now = time.time() if now is None else now
    with transaction(db):
        db.execute("INSERT INTO learning_decisions (at, train, reasons, observed) VALUES (?, ?, ?, ?)",
                   [now, int(train), json.dumps(list(reasons)), json.dumps(observed, default=str)])
        db.execute("DELETE FROM learning_decisions WHERE id <= (SELECT max(id) FROM learning_decisions) - ?", [KEEP_DECISIONS])


def last_decision(db: sqlite_utils.Database) -> dict[str, Any] | None:
    r = db.execute("SELECT at, train, reasons, observed FROM learning_decisions ORDER BY id DESC LIMIT 1").fetchone()
    return None if r is None else {"at": r[0], "train": bool(r[1]), "reasons": json.loads(r[2]), "observed": json.loads(r[3])}


def record_gate(db: sqlite_utils.Database, round_id: str, decision: str, *, active_auc: float | None, adapted_auc: float | None,
                margin: float, n_studies: int, n_positive: int, reason: str, weights_path: str | None, now: float | None = None) -> None:
    with transaction(db):
        db.execute("INSERT OR REPLACE INTO learning_gate (round_id, decision, active_auc, adapted_auc, margin, n_studies, n_positive, reason,"
                   " weights_path, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   [round_id, decision, active_auc, adapted_auc, margin, n_studies, n_positive, reason, weights_path,
                    time.time() if now is None else now])


def gate_of(db: sqlite_utils.Database, round_id: str) -> dict[str, Any] | None:
    r = db.execute("SELECT decision, active_auc, adapted_auc, margin, n_studies, n_positive, reason, weights_path, at FROM learning_gate"
                   " WHERE round_id = ?", [round_id]).fetchone()
    keys = ("decision", "active_auc", "adapted_auc", "margin", "n_studies", "n_positive", "reason", "weights_path", "at")
    return None if r is None else dict(zip(keys, r, strict=True))


def status(db: sqlite_utils.Database, version: str | None) -> dict[str, Any]:
    """Budget spent and left for the generation, its rounds, and the latest decision with its reasons."""
    out: dict[str, Any] = {"base_model_version": version, "last_decision": last_decision(db)}
    if version is None:
        return {**out, "epsilon_budget": None, "epsilon_spent": 0.0, "epsilon_left": None, "rounds": []}
    budget = budget_of(db, version)
    used = spent(db, version)
    rs = rounds(db, version)
    out.update(epsilon_budget=budget[0] if budget else None, delta=budget[1] if budget else None, epsilon_spent=used,
               epsilon_left=None if budget is None else max(0.0, budget[0] - used),
               rounds=[{**r.public(), "gate": gate_of(db, r.round_id)} for r in rs],
               rounds_done=sum(r.state == "done" for r in rs), open_round=next((r.round_id for r in rs if r.state in OPEN), None))
    return out
