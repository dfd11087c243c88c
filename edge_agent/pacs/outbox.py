"""The PACS outbox's own tables: per-destination export state, what each destination has acknowledged, destination keys.

The export itself is a job in the box's durable queue (queue ``pacs``, one
job per study and destination, idempotency key ``pacs:DEST:STUDY``), so a
second request for the same export finds the first instead of sending
again. Life of an export, as the kiosk and the console show it::

    queued ──► sending ──► sent
                 │  ▲
                 ▼  │ (retry with backoff: the PACS was down or refused)
               retrying ──► failed (pacs_max_attempts spent; `mammo export study` again re-queues it)

``pacs_sent`` lists each object a destination acknowledged: a retried export
resumes after them. Objects keep their SOP Instance UIDs on every attempt, so
even one sent twice (the box died between the PACS's answer and this row) is
the same object to the PACS, never a new one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import sqlite_utils

from edge_agent import audit, export_keys
from edge_agent.pacs.destinations import Destination
from edge_agent.queue import JobQueue
from edge_agent.store import transaction
from provisioning.envelope import open_sealed, seal

QUEUE = "pacs"
ACTOR = "pacs-export"
_KEY_AAD = b"mammo-pacs-key:"
_COLUMNS = ("study_uid, destination, mode, state, objects_total, objects_sent, attempts, last_error, requested_by, requested_at,"
            " updated_at, sent_at, job_id")


@dataclass(frozen=True)
class ExportState:
    """One study's export to one destination, as a person sees it (no identity: the study UID is the box's pseudonymous one)."""

    study_uid: str
    destination: str
    mode: str
    state: str
    objects_total: int
    objects_sent: int
    attempts: int
    last_error: str | None
    requested_by: str
    requested_at: float
    updated_at: float
    sent_at: float | None
    job_id: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def job_key(destination: str, study_uid: str) -> str:
    return f"pacs:{destination}:{study_uid}"


def request(queue: JobQueue, dest: Destination, study_uid: str, *, requested_by: str, max_attempts: int,
            now: float | None = None) -> ExportState:
    """Queue the export of a study to a destination, once: an export already queued or sent is returned as it is; a failed one goes back in line."""
    now = time.time() if now is None else now
    db = queue.db
    payload = {"study_uid": study_uid, "destination": dest.name}
    job = queue.enqueue(QUEUE, payload, key=job_key(dest.name, study_uid), max_attempts=max_attempts)
    if queue.get_state(job.job_id) == "dead":
        queue.requeue_dead(QUEUE, [job.job_id])
    with transaction(db):
        db.execute(
            "INSERT INTO pacs_exports (study_uid, destination, mode, job_id, state, requested_by, requested_at, updated_at)"
            " VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)"
            " ON CONFLICT (study_uid, destination) DO UPDATE SET job_id = excluded.job_id,"
            "   state = CASE WHEN pacs_exports.state = 'failed' THEN 'queued' ELSE pacs_exports.state END,"
            "   updated_at = CASE WHEN pacs_exports.state = 'failed' THEN excluded.updated_at ELSE pacs_exports.updated_at END",
            [study_uid, dest.name, dest.mode, job.job_id, requested_by, now, now],
        )
        if job.created:
            audit.append(db, requested_by, "pacs_export_requested", study_uid, {"destination": dest.name, "mode": dest.mode}, at=now)
    found = state_of(db, study_uid, dest.name)
    assert found is not None
    return found


def state_of(db: sqlite_utils.Database, study_uid: str, destination: str) -> ExportState | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM pacs_exports WHERE study_uid = ? AND destination = ?", [study_uid, destination]).fetchone()
    return ExportState(*row) if row else None


def states(db: sqlite_utils.Database, study_uid: str | None = None, limit: int = 50) -> list[ExportState]:
    """The latest exports (or one study's), newest first: what the console and the kiosk show."""
    if study_uid is None:
        rows = db.execute(f"SELECT {_COLUMNS} FROM pacs_exports ORDER BY updated_at DESC LIMIT ?", [limit]).fetchall()
    else:
        rows = db.execute(f"SELECT {_COLUMNS} FROM pacs_exports WHERE study_uid = ? ORDER BY destination", [study_uid]).fetchall()
    return [ExportState(*r) for r in rows]


def mark(db: sqlite_utils.Database, study_uid: str, destination: str, state: str, *, now: float, attempts: int | None = None,
         total: int | None = None, error: str | None = None) -> None:
    """Move an export to ``state`` (inside the caller's transaction if one is open)."""
    db.execute(
        "UPDATE pacs_exports SET state = ?, updated_at = ?, attempts = coalesce(?, attempts), objects_total = coalesce(?, objects_total),"
        " last_error = CASE WHEN ? = 'sent' THEN NULL ELSE coalesce(?, last_error) END,"
        " sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END WHERE study_uid = ? AND destination = ?",
        [state, now, attempts, total, state, error, state, now, study_uid, destination],
    )


def sent_uids(db: sqlite_utils.Database, destination: str, study_uid: str) -> set[str]:
    return {r[0] for r in db.execute("SELECT sop_uid FROM pacs_sent WHERE destination = ? AND study_uid = ?", [destination, study_uid]).fetchall()}


def record_sent(db: sqlite_utils.Database, destination: str, study_uid: str, sop_uid: str, kind: str, now: float) -> None:
    """One object acknowledged by the destination: remembered (so a retry skips it) and counted, in one transaction."""
    with transaction(db):
        cur = db.execute("INSERT OR IGNORE INTO pacs_sent (destination, sop_uid, study_uid, kind, sent_at) VALUES (?, ?, ?, ?, ?)",
                         [destination, sop_uid, study_uid, kind, now])
        if cur.rowcount:
            db.execute("UPDATE pacs_exports SET objects_sent = objects_sent + 1, updated_at = ? WHERE study_uid = ? AND destination = ?",
                       [now, study_uid, destination])


def destination_key(db: sqlite_utils.Database, master_key: bytes, destination: str, *, now: float) -> bytes:
    """A de-identified destination's own export key, drawn once and kept sealed: its pseudonyms and UIDs stay the same on every export."""
    with transaction(db):
        row = db.execute("SELECT sealed FROM pacs_keys WHERE destination = ?", [destination]).fetchone()
        if row is not None:
            return open_sealed(master_key, row[0], _KEY_AAD + destination.encode())
        key = export_keys.new_key()
        db.execute("INSERT INTO pacs_keys (destination, sealed, key_id, created_at) VALUES (?, ?, ?, ?)",
                   [destination, seal(master_key, key, _KEY_AAD + destination.encode()), export_keys.key_id(key), now])
        audit.append(db, ACTOR, "pacs_destination_key", destination, {"key_id": export_keys.key_id(key)}, at=now)
        return key


def counts(db: sqlite_utils.Database) -> dict[str, int]:
    """How many exports are in each state (the console's summary line)."""
    return {state: n for state, n in db.execute("SELECT state, count(*) FROM pacs_exports GROUP BY state").fetchall()}


def stuck(db: sqlite_utils.Database) -> ExportState | None:
    """The latest export that is retrying or failed: what the technician should look at first."""
    row = db.execute(f"SELECT {_COLUMNS} FROM pacs_exports WHERE state IN ('retrying', 'failed') ORDER BY updated_at DESC LIMIT 1").fetchone()
    return ExportState(*row) if row else None
