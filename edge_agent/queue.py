"""The durable job queue: named queues in the box database.

Life of a job::

    enqueue ──► ready ──claim──► leased ──ack──► done
                  ▲                │  │
                  └── fail (retry, ┘  └── fail after max_attempts ──► dead
                      backoff)                                         │
                  ▲                                                    │
                  └──────────────────── requeue_dead ◄─────────────────┘

A claim is a lease: if the worker dies, the lease expires and the job is
claimed again (at-least-once execution).  A job *completes* only through
``ack``, which checks the lease token in the same transaction that runs the
job's own database effect (``within``), so a job never completes twice even
when its worker is killed between doing the work and acknowledging it.

Retry timing is the pure function :func:`retry_delay`; the queue only
stores its result.
"""

from __future__ import annotations

import json
import json.encoder
import random
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from edge_agent.errors import LeaseLost
from edge_agent.store import transaction, translate, turn_of

Effect = Callable[[sqlite_utils.Database], None]

# The queues the box uses; any name is allowed, these are documented.
KNOWN_QUEUES = ("ingest", "infer", "report", "outbox", "notify", "train")

PRIORITY_ROUTINE = 0
PRIORITY_URGENT = 10

# The hot statements, as constants: sqlite3 keeps each prepared once per connection, keyed by its text.
_ENQUEUE = (
    "INSERT INTO jobs (queue, key, payload, priority, state, max_attempts, available_at, created_at, updated_at)"
    " VALUES (?1, ?2, ?3, ?4, 'ready', ?5, ?6, ?7, ?7)"
    " ON CONFLICT (queue, key) WHERE key IS NOT NULL DO NOTHING"
)
_BY_KEY = "SELECT id FROM jobs WHERE queue = ? AND key = ?"
# The open job that is due: ready and available, or leased with its lease run out (its worker died).
_DUE = (
    "SELECT id, payload, key, priority, attempts, max_attempts, created_at FROM jobs"
    " WHERE queue = ?1 AND closed_at IS NULL AND (CASE state WHEN 'ready' THEN available_at ELSE lease_expires_at END) <= ?2"
    " ORDER BY priority DESC, available_at, id LIMIT 1"
)
# Lease it only if nobody did since it was read (same attempts, still due): a compare-and-set, so the
# read and the write need no transaction around them.  Cheaper than UPDATE ... RETURNING here.
_LEASE = (
    "UPDATE jobs SET state = 'leased', lease_token = ?1, leased_by = ?2, lease_expires_at = ?3, attempts = ?4 + 1, updated_at = ?5"
    " WHERE id = ?6 AND attempts = ?4 AND closed_at IS NULL AND (CASE state WHEN 'ready' THEN available_at ELSE lease_expires_at END) <= ?5"
)
_BURY = (
    "UPDATE jobs SET state = 'dead', lease_token = NULL, last_error = ?1, updated_at = ?2, closed_at = ?2"
    " WHERE id = ?3 AND attempts = ?4 AND closed_at IS NULL"
)
_ACK = (
    "UPDATE jobs SET state = 'done', lease_token = NULL, done_at = ?1, updated_at = ?1, closed_at = ?1"
    " WHERE id = ?2 AND state = 'leased' AND lease_token = ?3"
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast a failing job is retried."""

    max_attempts: int = 5
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 600.0


def retry_delay(attempt: int, policy: RetryPolicy, rand: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, capped, equal jitter.

    Half the delay is fixed so a retry never fires at once; the other half is
    spread by ``rand`` in [0, 1) so a fleet of boxes does not retry in step.
    """
    ceiling = min(policy.backoff_cap_s, policy.backoff_base_s * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + rand * ceiling / 2


@dataclass(frozen=True)
class Job:
    id: int
    queue: str
    payload: Mapping[str, Any]
    key: str | None
    priority: int
    attempts: int
    max_attempts: int
    lease_token: str | None
    created_at: float


@dataclass(frozen=True)
class EnqueueResult:
    job_id: int
    created: bool


@dataclass(frozen=True)
class DeadJob:
    id: int
    queue: str
    key: str | None
    attempts: int
    last_error: str | None
    updated_at: float


@dataclass(frozen=True)
class QueueStats:
    queue: str
    ready: int
    leased: int
    done: int
    dead: int
    oldest_ready_age_s: float | None


class JobQueue:
    """Named, prioritised, leased queues over one SQLite database."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        policy: RetryPolicy = RetryPolicy(),
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.db = db
        self._conn = db.conn
        self._turn = turn_of(db.conn)
        self.policy = policy
        self._clock = clock
        self._rand = rand

    def enqueue(
        self,
        queue: str,
        payload: Mapping[str, Any],
        *,
        key: str | None = None,
        priority: int = PRIORITY_ROUTINE,
        max_attempts: int | None = None,
        delay_s: float = 0.0,
    ) -> EnqueueResult:
        """Add a job; a job with the same ``key`` in the same queue is not added twice.

        One INSERT is its own transaction (SQLite commits it when the statement ends), so an
        enqueue costs one statement and one commit, not BEGIN, INSERT and COMMIT.
        """
        now = self._clock()
        args = (queue, key, _encode(payload), priority, max_attempts or self.policy.max_attempts, now + delay_s, now)
        with self._turn:
            try:
                cur = sqlite3.Cursor(self._conn).execute(_ENQUEUE, args)
                if cur.rowcount == 1:
                    return EnqueueResult(cur.lastrowid, True)  # type: ignore[arg-type]
                return EnqueueResult(cur.execute(_BY_KEY, (queue, key)).fetchone()[0], False)
            except sqlite3.Error as exc:
                raise translate(exc) from exc

    def enqueue_tx(
        self,
        db: sqlite_utils.Database,
        queue: str,
        payload: Mapping[str, Any],
        *,
        key: str | None = None,
        priority: int = PRIORITY_ROUTINE,
        max_attempts: int | None = None,
        delay_s: float = 0.0,
    ) -> EnqueueResult:
        """:meth:`enqueue` inside a transaction the caller holds (e.g. an ack effect queuing the next step)."""
        now = self._clock()
        cur = db.execute(_ENQUEUE, [queue, key, _encode(payload), priority, max_attempts or self.policy.max_attempts, now + delay_s, now])
        if cur.rowcount == 1:
            return EnqueueResult(cur.lastrowid, True)  # type: ignore[arg-type]
        return EnqueueResult(db.execute(_BY_KEY, [queue, key]).fetchone()[0], False)

    def claim(self, queue: str, *, worker: str = "worker", lease_s: float = 60.0) -> Job | None:
        """Lease the most urgent available job, or return None when there is none.

        A read and a compare-and-set UPDATE, with no BEGIN/COMMIT around them: the UPDATE is its
        own transaction, like :meth:`enqueue`.
        """
        with self._turn:
            try:
                return self._claim(sqlite3.Cursor(self._conn), queue, worker, lease_s)
            except sqlite3.Error as exc:
                raise translate(exc) from exc

    def _claim(self, cur: sqlite3.Cursor, queue: str, worker: str, lease_s: float) -> Job | None:
        while True:
            now = self._clock()
            row = cur.execute(_DUE, (queue, now)).fetchone()
            if row is None:
                return None
            job_id, payload, key, priority, attempts, max_attempts, created_at = row
            if attempts >= max_attempts:
                # Its leases kept expiring: the worker dies on it every time. Stop retrying.
                cur.execute(_BURY, (f"lease expired {max_attempts} times (worker crashed or hung on this job)", now, job_id, attempts))
                continue
            token = f"{random.getrandbits(64):016x}"  # unique per lease, no system call; reseeded after fork
            if cur.execute(_LEASE, (token, worker, now + lease_s, attempts, now, job_id)).rowcount == 1:
                return _job(job_id, queue, _decode(payload), key, priority, attempts + 1, max_attempts, token, created_at)
            # Another process leased it between the two statements: look again.

    def ack(self, job: Job, within: Effect | None = None) -> None:
        """Complete the job; ``within`` runs in the same transaction, so its effect lands exactly once."""
        with transaction(self.db) as db:
            self._ack(sqlite3.Cursor(self._conn), db, job, within)

    def ack_and_claim(self, job: Job, within: Effect | None = None, *, worker: str = "worker", lease_s: float = 60.0) -> Job | None:
        """Complete ``job`` and lease the next one in a single commit (one fsync instead of two per job)."""
        with transaction(self.db) as db:
            cur = sqlite3.Cursor(self._conn)
            self._ack(cur, db, job, within)
            return self._claim(cur, job.queue, worker, lease_s)

    def _ack(self, cur: sqlite3.Cursor, db: sqlite_utils.Database, job: Job, within: Effect | None) -> None:
        if cur.execute(_ACK, (self._clock(), job.id, job.lease_token)).rowcount != 1:
            raise LeaseLost(f"Job {job.id} ({job.queue}) lost its lease before ack; another worker owns it now.")
        if within is not None:
            within(db)

    def fail(self, job: Job, error: str) -> str:
        """Record a failed attempt: retry later with backoff, or dead-letter. Returns the new state."""
        now = self._clock()
        dead = job.attempts >= job.max_attempts
        state = "dead" if dead else "ready"
        available = now if dead else now + retry_delay(job.attempts, self.policy, self._rand())
        with transaction(self.db) as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, available_at = ?, lease_token = NULL, last_error = ?, updated_at = ?, closed_at = ?"
                " WHERE id = ? AND state = 'leased' AND lease_token = ?",
                [state, available, error[:4000], now, now if dead else None, job.id, job.lease_token],
            )
            if cur.rowcount != 1:
                raise LeaseLost(f"Job {job.id} ({job.queue}) lost its lease before fail.")
        return state

    def release(self, job: Job) -> None:
        """Give the job back untouched (a clean shutdown); the attempt does not count."""
        with transaction(self.db) as db:
            db.execute(
                "UPDATE jobs SET state = 'ready', attempts = attempts - 1, lease_token = NULL, available_at = ?, updated_at = ?"
                " WHERE id = ? AND state = 'leased' AND lease_token = ?",
                [self._clock(), self._clock(), job.id, job.lease_token],
            )

    def extend(self, job: Job, lease_s: float) -> None:
        """Keep a long job's lease alive."""
        with transaction(self.db) as db:
            cur = db.execute(
                "UPDATE jobs SET lease_expires_at = ?, updated_at = ? WHERE id = ? AND state = 'leased' AND lease_token = ?",
                [self._clock() + lease_s, self._clock(), job.id, job.lease_token],
            )
            if cur.rowcount != 1:
                raise LeaseLost(f"Job {job.id} ({job.queue}) lost its lease; cannot extend it.")

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadJob]:
        sql = "SELECT id, queue, key, attempts, last_error, updated_at FROM jobs WHERE state = 'dead'"
        args: list[Any] = []
        if queue:
            sql += " AND queue = ?"
            args.append(queue)
        sql += " ORDER BY id LIMIT ?"
        return [DeadJob(*r) for r in self.db.execute(sql, args + [limit]).fetchall()]

    def requeue_dead(self, queue: str, job_ids: list[int] | None = None) -> int:
        """Put dead-lettered jobs back in line with fresh attempts; returns how many."""
        sql = "UPDATE jobs SET state = 'ready', attempts = 0, available_at = ?, updated_at = ?, closed_at = NULL WHERE state = 'dead' AND queue = ?"
        now = self._clock()
        args: list[Any] = [now, now, queue]
        if job_ids:
            sql += f" AND id IN ({','.join('?' * len(job_ids))})"
            args += list(job_ids)
        with transaction(self.db) as db:
            return db.execute(sql, args).rowcount

    def purge_done(self, older_than_s: float) -> int:
        """Drop completed jobs older than the horizon (their idempotency keys are freed too)."""
        with transaction(self.db) as db:
            return db.execute("DELETE FROM jobs WHERE state = 'done' AND done_at < ?", [self._clock() - older_than_s]).rowcount

    def stats(self) -> dict[str, QueueStats]:
        now = self._clock()
        counts: dict[str, dict[str, int]] = {}
        for q, state, n in self.db.execute("SELECT queue, state, count(*) FROM jobs GROUP BY queue, state").fetchall():
            counts.setdefault(q, {})[state] = n
        oldest = dict(
            self.db.execute("SELECT queue, min(available_at) FROM jobs WHERE state = 'ready' GROUP BY queue").fetchall()
        )
        return {
            q: QueueStats(
                q, c.get("ready", 0), c.get("leased", 0), c.get("done", 0), c.get("dead", 0),
                max(0.0, now - oldest[q]) if oldest.get(q) is not None else None,
            )
            for q, c in sorted(counts.items())
        }

    def get_state(self, job_id: int) -> str | None:
        row = self.db.execute("SELECT state FROM jobs WHERE id = ?", [job_id]).fetchone()
        return row[0] if row else None


_encoder = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
# The C encoder, built once (JSONEncoder.encode builds it, a closure and a dict again on every call). No cycle
# check (markers=None): a payload that contains itself raises RecursionError instead of ValueError.
_make_c_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_c_encoder: Any = _make_c_encoder and _make_c_encoder(
    None, _encoder.default, json.encoder.encode_basestring_ascii, None, ":", ",", True, False, True)


def _encode(payload: Mapping[str, Any]) -> str:
    """Compact, key-sorted, ASCII JSON: the same text as ``_encoder.encode``, at half the cost."""
    if _c_encoder is None or isinstance(payload, str):  # encode() special-cases a bare string
        return _encoder.encode(payload)
    return "".join(_c_encoder(payload, 0))


_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _decode(text: str) -> Any:
    """``json.loads`` without its two whitespace regexes (``_encode`` writes no whitespace): half the cost.

    Anything that is not one bare JSON value, end to end, goes to ``json.loads`` for its usual result or error.
    """
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def _job(
    id: int, queue: str, payload: Any, key: str | None, priority: int, attempts: int, max_attempts: int,
    lease_token: str | None, created_at: float,
) -> Job:
    """A :class:`Job` without the frozen dataclass ``__init__`` (one ``object.__setattr__`` per field): a third of the cost."""
    job = object.__new__(Job)
    job.__dict__.update(id=id, queue=queue, payload=payload, key=key, priority=priority, attempts=attempts,
                        max_attempts=max_attempts, lease_token=lease_token, created_at=created_at)
    return job
