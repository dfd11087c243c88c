"""Schema migrations of the box database, per component.

Each component owns an ordered list of SQL scripts; ``store.open_database``
applies the ones not yet recorded in ``schema_migrations``.  Append new
scripts to the end of a component's list; never edit one that has shipped.
"""

from __future__ import annotations

QUEUE = [
    # 1: jobs with a partial index over open jobs, so claim stays flat as done rows pile up.
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        key TEXT,
        payload TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('ready', 'leased', 'done', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        available_at REAL NOT NULL,
        lease_token TEXT,
        leased_by TEXT,
        lease_expires_at REAL,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        done_at REAL
    );
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (queue, key) WHERE key IS NOT NULL;
    CREATE INDEX jobs_open ON jobs (queue, priority DESC, available_at, id)
        WHERE state IN ('ready', 'leased');
    CREATE INDEX jobs_dead ON jobs (queue, id) WHERE state = 'dead';
    """,
]

INGEST = [
    # 1: de-identified instances and studies, the quarantine index and the sealed re-identification map.
    #    No column holds a name, a patient ID or an original UID (owned by edge_agent.ingest).
    """
    CREATE TABLE ingest_studies (
        study_uid TEXT PRIMARY KEY,
        pseudonym TEXT NOT NULL,
        modality TEXT NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open', 'complete')),
        complete_reason TEXT,
        completed_at REAL,
        infer_job_id INTEGER
    );
    CREATE INDEX ingest_studies_open ON ingest_studies (last_seen) WHERE state = 'open';
    CREATE INDEX ingest_studies_unqueued ON ingest_studies (study_uid) WHERE state = 'complete' AND infer_job_id IS NULL;
    CREATE TABLE ingest_instances (
        sop_uid TEXT PRIMARY KEY,
        study_uid TEXT NOT NULL REFERENCES ingest_studies (study_uid),
        series_uid TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        modality TEXT NOT NULL,
        sop_class TEXT NOT NULL,
        laterality TEXT NOT NULL,
        view TEXT NOT NULL,
        outcome TEXT NOT NULL,
        fixes TEXT NOT NULL,
        source TEXT NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE INDEX ingest_instances_study ON ingest_instances (study_uid);
    CREATE TABLE ingest_quarantine (
        id INTEGER PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        reason_code TEXT NOT NULL,
        reason TEXT NOT NULL,
        source TEXT NOT NULL,
        size INTEGER NOT NULL,
        fixes TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('held', 'released', 'purged')),
        received_at REAL NOT NULL,
        resolved_at REAL
    );
    CREATE INDEX ingest_quarantine_held ON ingest_quarantine (received_at) WHERE status = 'held';
    CREATE TABLE ingest_reid (
        pseudonym TEXT PRIMARY KEY,
        sealed BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    """,
]

MIGRATIONS: dict[str, list[str]] = {
    "queue": QUEUE,
    "ingest": INGEST,
}
