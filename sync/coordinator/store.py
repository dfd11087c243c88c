"""The coordinator's own SQLite store: received encrypted updates, rounds, which updates each took, model generations.

It lives in the coordinator's home (``coordinator.sqlite3``), never in a box
database, and holds no secret key: ciphertexts, hashes, counts and epsilons.
The life of a received update::

    receive ─┬─ same hash (or same box + update_id) seen before ──► "duplicate" (a no-op, counted)
             ├─ damaged, wrong size/spec/HE level, unknown or too-stale base ──► "rejected" (kept, reason given)
             └─ otherwise ──► "accepted": buffered ──commit_round──► aggregated (its ciphertext dropped)
                                         └─ too stale by the time a round runs ──► rejected

The box acknowledges on "accepted" and "duplicate" and closes its row on
"rejected" (``sync.outbox``).  Receiving is idempotent: the same bytes twice
leave one row.  Model generations count the global models published: the base
model (0.1.0) is generation 0 and each released round adds one; staleness is
counted in generations (``sync.coordinator.strategy``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils

from edge_agent.errors import IntegrityError, SyncError, UpdateRejected
from edge_agent.store import _statements, open_database, transaction
from provisioning.files import private_dir
from sync import he
from sync.coordinator.strategy import Buffered, RoundPlan, StrategyConfig, admissible

if TYPE_CHECKING:
    import tenseal as ts

DB_FILE = "coordinator.sqlite3"

MIGRATIONS = [
    """
    CREATE TABLE fl_models (
        generation INTEGER PRIMARY KEY,
        version TEXT NOT NULL UNIQUE,
        spec_digest TEXT NOT NULL,
        round INTEGER,
        release_sha256 TEXT,
        created_at REAL NOT NULL
    );
    CREATE TABLE fl_updates (
        sha256 TEXT PRIMARY KEY,
        update_id TEXT NOT NULL,
        box_id TEXT NOT NULL,
        base_model_version TEXT NOT NULL,
        base_generation INTEGER,
        spec_digest TEXT NOT NULL,
        value_count INTEGER NOT NULL,
        example_count INTEGER NOT NULL,
        epsilon REAL NOT NULL,
        delta_dp REAL NOT NULL,
        noise_multiplier REAL NOT NULL,
        local_metrics TEXT NOT NULL,
        he_version INTEGER,
        bytes INTEGER NOT NULL,
        created_at REAL,
        received_at REAL NOT NULL,
        duplicates INTEGER NOT NULL DEFAULT 0,
        last_duplicate_at REAL,
        state TEXT NOT NULL CHECK (state = 'buffered' OR state = 'aggregated' OR state = 'rejected'),
        reason TEXT,
        round INTEGER,
        UNIQUE (box_id, update_id)
    );
    CREATE INDEX fl_updates_buffered ON fl_updates (received_at) WHERE state = 'buffered';
    CREATE TABLE fl_update_payload (
        sha256 TEXT PRIMARY KEY REFERENCES fl_updates (sha256),
        data BLOB NOT NULL
    );
    CREATE TABLE fl_rounds (
        round INTEGER PRIMARY KEY,
        base_generation INTEGER NOT NULL,
        trigger TEXT NOT NULL,
        total_weight REAL NOT NULL,
        aggregate BLOB NOT NULL,
        aggregate_sha256 TEXT NOT NULL,
        created_at REAL NOT NULL,
        new_model_version TEXT,
        manifest BLOB,
        manifest_signature BLOB,
        released_at REAL
    );
    CREATE TABLE fl_round_updates (
        round INTEGER NOT NULL REFERENCES fl_rounds (round),
        sha256 TEXT NOT NULL REFERENCES fl_updates (sha256),
        staleness INTEGER NOT NULL,
        weight REAL NOT NULL,
        share REAL NOT NULL,
        PRIMARY KEY (round, sha256)
    );
    """,
]


@dataclass(frozen=True)
class Incoming:
    """An update as a box sends it: the outbox's metadata (``OutboxEntry.metadata``) and the sending box's id."""

    box_id: str
    update_id: str
    sha256: str
    base_model_version: str
    spec_digest: str
    value_count: int
    example_count: int
    epsilon: float
    delta_dp: float
    noise_multiplier: float
    local_metrics: dict[str, float]
    he_version: int | None
    created_at: float | None

    @classmethod
    def from_metadata(cls, box_id: str, meta: Mapping[str, Any]) -> Incoming:
        try:
            return cls(box_id=box_id, update_id=str(meta["update_id"]), sha256=str(meta["sha256"]), base_model_version=str(meta["base_model_version"]),
                       spec_digest=str(meta["spec_digest"]), value_count=int(meta["value_count"]), example_count=int(meta["example_count"]),
                       epsilon=float(meta["epsilon"]), delta_dp=float(meta["delta_dp"]), noise_multiplier=float(meta["noise_multiplier"]),
                       local_metrics={str(k): float(v) for k, v in dict(meta.get("local_metrics") or {}).items()},
                       he_version=None if meta.get("he_version") is None else int(meta["he_version"]),
                       created_at=None if meta.get("created_at") is None else float(meta["created_at"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UpdateRejected(f"Update metadata from box {box_id} is incomplete or malformed ({exc!r}). Fix: update the box software.") from None


@dataclass(frozen=True)
class Receipt:
    """The coordinator's answer to one upload; the box acknowledges "accepted" and "duplicate" by ``sha256``."""

    sha256: str
    status: str  # accepted | duplicate | rejected
    reason: str | None = None

    @property
    def acknowledged(self) -> bool:
        return self.status in ("accepted", "duplicate")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Model:
    generation: int
    version: str
    spec_digest: str
    round: int | None
    created_at: float


# --- opening ------------------------------------------------------------------------------------------------------------


def open_store(home: Path) -> sqlite_utils.Database:
    """Open (or create) ``home/coordinator.sqlite3`` with its own schema (the box's migrations are not applied)."""
    private_dir(home)
    db = open_database(home / DB_FILE, migrate=False)
    db.execute("CREATE TABLE IF NOT EXISTS fl_schema (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {r[0] for r in db.execute("SELECT version FROM fl_schema").fetchall()}
    for version, script in enumerate(MIGRATIONS, start=1):
        if version in done:
            continue
        with transaction(db):
            for statement in _statements(script):
                db.execute(statement)
            db.execute("INSERT INTO fl_schema VALUES (?, ?)", [version, time.time()])
    return db


# --- models (generations) -------------------------------------------------------------------------------------------------


def register_base_model(db: sqlite_utils.Database, version: str, spec_digest: str, *, now: float | None = None) -> Model:
    """Make ``version`` generation 0, the model boxes start from (idempotent for the same version)."""
    with transaction(db):
        row = db.execute("SELECT version FROM fl_models WHERE generation = 0").fetchone()
        if row is None:
            db.execute("INSERT INTO fl_models (generation, version, spec_digest, created_at) VALUES (0, ?, ?, ?)", [version, spec_digest, time.time() if now is None else now])
        elif row[0] != version:
            raise SyncError(f"This coordinator's base model is {row[0]}, not {version}. Fix: use a new coordinator home for another federation.")
    return current_model(db)


def current_model(db: sqlite_utils.Database) -> Model:
    row = db.execute("SELECT generation, version, spec_digest, round, created_at FROM fl_models ORDER BY generation DESC LIMIT 1").fetchone()
    if row is None:
        raise SyncError("The coordinator has no model yet. Fix: register the base model release first (register_base_model).")
    return Model(*row)


def generations(db: sqlite_utils.Database) -> dict[str, int]:
    return {r[0]: r[1] for r in db.execute("SELECT version, generation FROM fl_models").fetchall()}


# --- receiving ------------------------------------------------------------------------------------------------------------


def receive(db: sqlite_utils.Database, incoming: Incoming, data: bytes, *, public_ctx: ts.Context | None = None,
            config: StrategyConfig | None = None, he_version: int | None = None, now: float | None = None) -> Receipt:
    """Keep one uploaded update, or say why not.  The same hash twice is a no-op reported as "duplicate".

    Raises ``IntegrityError`` (nothing stored) when the bytes do not hash to what the box
    announced: a transfer fault, so the box simply sends again.  With ``public_ctx`` every
    ciphertext is deserialised and checked (size, level, scale) before it is accepted; with
    ``he_version`` (that context's version) an update under another CKKS key is rejected.
    """
    now = time.time() if now is None else now
    if he.sha256(data) != incoming.sha256:
        raise IntegrityError(f"Update {incoming.sha256[:12]}… from box {incoming.box_id} arrived damaged (hash differs). Nothing was stored; the box sends it again.")
    seen = _duplicate(db, incoming, now)
    if seen:
        return seen
    model = current_model(db)
    base = generations(db).get(incoming.base_model_version)
    reason: str | None = None
    if base is None:
        reason = f"base model {incoming.base_model_version} is unknown to this coordinator"
    elif incoming.value_count <= 0:
        reason = "no values"
    else:
        reason = admissible(_buffered(incoming, base, now), model.generation, model.spec_digest, config or StrategyConfig(), he_version=he_version)
    if reason is None:
        try:
            info = he.frame_info(data)
            if info.values != incoming.value_count:
                raise UpdateRejected(f"the ciphertext holds {info.values} values, the metadata says {incoming.value_count}")
            if public_ctx is not None:
                he.load(public_ctx, data, expect_values=incoming.value_count)
        except UpdateRejected as exc:
            reason = str(exc)
    with transaction(db):
        again = _count_duplicate(db, incoming, now)
        if again:  # a concurrent upload of the same update won
            return again
        db.execute(
            "INSERT INTO fl_updates (sha256, update_id, box_id, base_model_version, base_generation, spec_digest, value_count, example_count, epsilon, "
            "delta_dp, noise_multiplier, local_metrics, he_version, bytes, created_at, received_at, state, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [incoming.sha256, incoming.update_id, incoming.box_id, incoming.base_model_version, base, incoming.spec_digest, incoming.value_count,
             incoming.example_count, incoming.epsilon, incoming.delta_dp, incoming.noise_multiplier, json.dumps(incoming.local_metrics, sort_keys=True),
             incoming.he_version, len(data), incoming.created_at, now, "rejected" if reason else "buffered", reason])
        if reason is None:
            db.execute("INSERT INTO fl_update_payload (sha256, data) VALUES (?, ?)", [incoming.sha256, data])
    return Receipt(incoming.sha256, "rejected" if reason else "accepted", reason)


def _duplicate(db: sqlite_utils.Database, incoming: Incoming, now: float) -> Receipt | None:
    with transaction(db):
        return _count_duplicate(db, incoming, now)


def _count_duplicate(db: sqlite_utils.Database, incoming: Incoming, now: float) -> Receipt | None:
    """Inside a transaction: the receipt for an update seen before (counting the repeat), or None."""
    row = db.execute("SELECT sha256, state, reason FROM fl_updates WHERE sha256 = ? OR (box_id = ? AND update_id = ?)",
                     [incoming.sha256, incoming.box_id, incoming.update_id]).fetchone()
    if row is None:
        return None
    db.execute("UPDATE fl_updates SET duplicates = duplicates + 1, last_duplicate_at = ? WHERE sha256 = ?", [now, row[0]])
    if row[1] == "rejected":
        return Receipt(incoming.sha256, "rejected", row[2])
    return Receipt(incoming.sha256, "duplicate", None if row[0] == incoming.sha256 else f"update {incoming.update_id} was received before as {row[0][:12]}…")


def _buffered(incoming: Incoming, base: int, now: float) -> Buffered:
    return Buffered(incoming.sha256, incoming.box_id, incoming.update_id, base, incoming.example_count, incoming.epsilon, now, incoming.spec_digest,
                    incoming.he_version)


def receipt_of(db: sqlite_utils.Database, sha: str) -> Receipt | None:
    """What the coordinator says about an update it may have received (a box asking after a cut connection)."""
    row = db.execute("SELECT state, reason FROM fl_updates WHERE sha256 = ?", [sha]).fetchone()
    if row is None:
        return None
    return Receipt(sha, "rejected", row[1]) if row[0] == "rejected" else Receipt(sha, "duplicate")


# --- rounds ----------------------------------------------------------------------------------------------------------------


def buffer(db: sqlite_utils.Database) -> list[Buffered]:
    """The accepted updates waiting for a round, oldest first."""
    rows = db.execute("SELECT sha256, box_id, update_id, base_generation, example_count, epsilon, received_at, spec_digest, he_version FROM fl_updates "
                      "WHERE state = 'buffered' ORDER BY received_at, sha256").fetchall()
    return [Buffered(*r) for r in rows]


def ciphertext(db: sqlite_utils.Database, sha: str) -> bytes:
    row = db.execute("SELECT data FROM fl_update_payload WHERE sha256 = ?", [sha]).fetchone()
    if row is None:
        raise SyncError(f"The coordinator holds no ciphertext for update {sha[:12]}… (aggregated or rejected already).")
    data = bytes(row[0])
    if he.sha256(data) != sha:
        raise IntegrityError(f"The stored ciphertext of update {sha[:12]}… no longer matches its hash (disk damage); reject it and let the round go on without it.")
    return data


def open_round(db: sqlite_utils.Database) -> int | None:
    """The round aggregated but not yet released (a clinic still has to decrypt it), if any."""
    row = db.execute("SELECT round FROM fl_rounds WHERE released_at IS NULL ORDER BY round LIMIT 1").fetchone()
    return None if row is None else int(row[0])


def reject(db: sqlite_utils.Database, rejected: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> None:
    """Close buffered updates the strategy refused (too stale by now, another spec), dropping their ciphertexts."""
    if not rejected:
        return
    with transaction(db):
        for sha, reason in rejected:
            db.execute("UPDATE fl_updates SET state = 'rejected', reason = ? WHERE sha256 = ? AND state = 'buffered'", [reason, sha])
            db.execute("DELETE FROM fl_update_payload WHERE sha256 = ?", [sha])


def commit_round(db: sqlite_utils.Database, plan: RoundPlan, aggregate: bytes, *, now: float | None = None) -> int:
    """Record a round in one transaction: its aggregate, which updates it took with their weights, and its rejections.

    Refused while another round waits for its release: each round is planned on the model the
    previous one produced.
    """
    if not plan.contributions:
        raise SyncError("A round needs at least one update. Fix: call plan_round until it returns contributions.")
    now = time.time() if now is None else now
    with transaction(db):
        if db.execute("SELECT 1 FROM fl_rounds WHERE released_at IS NULL").fetchone():
            raise SyncError("Another round is aggregated and not yet released. Fix: release it (a clinic decrypts the aggregate) first.")
        if current_model(db).generation != plan.base_generation:
            raise SyncError("The round was planned on an older model generation. Fix: plan it again.")
        number = int(db.execute("SELECT coalesce(max(round), 0) + 1 FROM fl_rounds").fetchone()[0])
        db.execute("INSERT INTO fl_rounds (round, base_generation, trigger, total_weight, aggregate, aggregate_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   [number, plan.base_generation, plan.trigger, plan.total_weight, aggregate, he.sha256(aggregate), now])
        for c in plan.contributions:
            moved = db.execute("UPDATE fl_updates SET state = 'aggregated', round = ? WHERE sha256 = ? AND state = 'buffered'", [number, c.sha256]).rowcount
            if moved != 1:
                raise SyncError(f"Update {c.sha256[:12]}… is no longer buffered; the round was not recorded. Fix: plan it again.")
            db.execute("INSERT INTO fl_round_updates (round, sha256, staleness, weight, share) VALUES (?, ?, ?, ?, ?)", [number, c.sha256, c.staleness, c.weight, c.share])
            db.execute("DELETE FROM fl_update_payload WHERE sha256 = ?", [c.sha256])
        for sha, reason in plan.rejected:
            db.execute("UPDATE fl_updates SET state = 'rejected', reason = ? WHERE sha256 = ? AND state = 'buffered'", [reason, sha])
            db.execute("DELETE FROM fl_update_payload WHERE sha256 = ?", [sha])
    return number


def round_aggregate(db: sqlite_utils.Database, number: int) -> bytes:
    row = db.execute("SELECT aggregate FROM fl_rounds WHERE round = ?", [number]).fetchone()
    if row is None:
        raise SyncError(f"No round {number}. Fix: list the rounds with `mammo coordinator status`.")
    return bytes(row[0])


def round_contributions(db: sqlite_utils.Database, number: int) -> list[dict[str, Any]]:
    """The updates a round took: hash, box, weights, staleness, examples and epsilon (what its manifest lists)."""
    rows = db.execute("SELECT r.sha256, u.box_id, u.update_id, r.staleness, r.weight, r.share, u.example_count, u.epsilon, u.delta_dp "
                      "FROM fl_round_updates r JOIN fl_updates u USING (sha256) WHERE r.round = ? ORDER BY u.received_at, r.sha256", [number]).fetchall()
    keys = ("sha256", "box_id", "update_id", "staleness", "weight", "share", "example_count", "epsilon", "delta_dp")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def record_release(db: sqlite_utils.Database, number: int, version: str, *, manifest: bytes, signature: bytes, release_sha256: str | None = None,
                   now: float | None = None) -> Model:
    """The round's model is published as ``version`` with its signed manifest: one generation more."""
    now = time.time() if now is None else now
    with transaction(db):
        row = db.execute("SELECT released_at, base_generation FROM fl_rounds WHERE round = ?", [number]).fetchone()
        if row is None or row[0] is not None:
            raise SyncError(f"Round {number} does not exist or was released already.")
        model = current_model(db)
        if model.generation != row[1]:
            raise SyncError(f"Round {number} was aggregated on generation {row[1]}, the current model is {model.generation}.")
        db.execute("UPDATE fl_rounds SET new_model_version = ?, manifest = ?, manifest_signature = ?, released_at = ? WHERE round = ?",
                   [version, manifest, signature, now, number])
        db.execute("INSERT INTO fl_models (generation, version, spec_digest, round, release_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                   [model.generation + 1, version, model.spec_digest, number, release_sha256, now])
    return current_model(db)


def round_manifest(db: sqlite_utils.Database, number: int) -> tuple[bytes, bytes] | None:
    """A released round's signed manifest (body, signature), for boxes checking their update was included."""
    row = db.execute("SELECT manifest, manifest_signature FROM fl_rounds WHERE round = ? AND manifest IS NOT NULL", [number]).fetchone()
    return None if row is None else (bytes(row[0]), bytes(row[1]))


# --- reporting ---------------------------------------------------------------------------------------------------------------


def status(db: sqlite_utils.Database, *, now: float | None = None) -> dict[str, Any]:
    """What `mammo coordinator status` and the console show: updates by state, the buffer, rounds, models, each box's last upload."""
    now = time.time() if now is None else now
    counts = {"buffered": 0, "aggregated": 0, "rejected": 0}
    counts.update({r[0]: r[1] for r in db.execute("SELECT state, count(*) FROM fl_updates GROUP BY state").fetchall()})
    duplicates = db.execute("SELECT coalesce(sum(duplicates), 0) FROM fl_updates").fetchone()[0]
    oldest = db.execute("SELECT min(received_at) FROM fl_updates WHERE state = 'buffered'").fetchone()[0]
    boxes = [{"box_id": r[0], "last_received_at": r[1], "updates": r[2], "aggregated": r[3], "rejected": r[4], "last_local_metrics": json.loads(r[5]) if r[5] else {}}
             for r in db.execute("SELECT box_id, max(received_at), count(*), sum(state = 'aggregated'), sum(state = 'rejected'), "
                                 "(SELECT local_metrics FROM fl_updates v WHERE v.box_id = u.box_id ORDER BY received_at DESC LIMIT 1) "
                                 "FROM fl_updates u GROUP BY box_id ORDER BY box_id").fetchall()]
    rounds = [{"round": r[0], "base_generation": r[1], "trigger": r[2], "total_weight": r[3], "created_at": r[4], "new_model_version": r[5], "released_at": r[6],
               "updates": r[7]}
              for r in db.execute("SELECT round, base_generation, trigger, total_weight, created_at, new_model_version, released_at, "
                                  "(SELECT count(*) FROM fl_round_updates x WHERE x.round = r.round) FROM fl_rounds r ORDER BY round").fetchall()]
    models = [{"generation": r[0], "version": r[1], "round": r[2], "created_at": r[3]}
              for r in db.execute("SELECT generation, version, round, created_at FROM fl_models ORDER BY generation").fetchall()]
    return {"updates": counts, "duplicates_received": int(duplicates), "buffered": counts["buffered"],
            "oldest_buffered_age_s": None if oldest is None else max(0.0, now - oldest), "open_round": open_round(db),
            "rounds": rounds, "models": models, "boxes": boxes}
