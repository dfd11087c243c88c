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
    # 2: the open-jobs index keyed on closed_at (set when a job is done or dead, cleared on requeue), not on
    #    state: a claim (ready -> leased) then rewrites its row and touches no index.
    """
    ALTER TABLE jobs ADD COLUMN closed_at REAL;
    UPDATE jobs SET closed_at = coalesce(done_at, updated_at) WHERE state IN ('done', 'dead');
    DROP INDEX jobs_open;
    CREATE INDEX jobs_open ON jobs (queue, priority DESC, available_at, id) WHERE closed_at IS NULL;
    """,
    # 3: the state CHECK written as ORs, not as an IN list: SQLite builds a throwaway index for an IN list
    #    each time a statement checks it, which cost about a fifth of the CPU of an enqueue or a claim+ack.
    #    SQLite cannot alter a constraint, so the table is rebuilt (same columns, same ids, same indexes).
    """
    CREATE TABLE jobs_v3 (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        key TEXT,
        payload TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state = 'ready' OR state = 'leased' OR state = 'done' OR state = 'dead'),
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        available_at REAL NOT NULL,
        lease_token TEXT,
        leased_by TEXT,
        lease_expires_at REAL,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        done_at REAL,
        closed_at REAL
    );
    INSERT INTO jobs_v3 (id, queue, key, payload, priority, state, attempts, max_attempts, available_at, lease_token,
                         leased_by, lease_expires_at, last_error, created_at, updated_at, done_at, closed_at)
        SELECT id, queue, key, payload, priority, state, attempts, max_attempts, available_at, lease_token,
               leased_by, lease_expires_at, last_error, created_at, updated_at, done_at, closed_at FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_v3 RENAME TO jobs;
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (queue, key) WHERE key IS NOT NULL;
    CREATE INDEX jobs_open ON jobs (queue, priority DESC, available_at, id) WHERE closed_at IS NULL;
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

INFER = [
    # 1: triage results per study and per view, and the model activation history (owned by edge_agent.inference).
    """
    CREATE TABLE infer_results (
        study_uid TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('done', 'incomplete', 'failed')),
        triage TEXT,
        study_score REAL,
        breast_scores TEXT NOT NULL,
        reasons TEXT NOT NULL,
        model_version TEXT NOT NULL,
        profile TEXT NOT NULL,
        backend TEXT NOT NULL,
        elapsed_ms REAL NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX infer_results_created ON infer_results (created_at);
    CREATE TABLE infer_views (
        study_uid TEXT NOT NULL,
        sop_uid TEXT NOT NULL,
        view TEXT NOT NULL,
        laterality TEXT NOT NULL,
        p_abnormal REAL NOT NULL,
        p_malignant REAL NOT NULL,
        peak_x INTEGER NOT NULL,
        peak_y INTEGER NOT NULL,
        heatmap_digest TEXT NOT NULL,
        PRIMARY KEY (study_uid, sop_uid)
    );
    CREATE TABLE model_activations (
        id INTEGER PRIMARY KEY,
        version TEXT NOT NULL,
        path TEXT NOT NULL,
        manifest_sha256 TEXT NOT NULL,
        activated_at REAL NOT NULL,
        activated_by TEXT NOT NULL,
        reason TEXT NOT NULL,
        selftest TEXT NOT NULL
    );
    CREATE TABLE infer_runtime (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        profile TEXT NOT NULL,
        backend TEXT NOT NULL,
        model_version TEXT NOT NULL,
        fallback_reason TEXT,
        updated_at REAL NOT NULL
    );
    """,
    # 2: the contralateral suspicion score each view was triaged on.
    """
    ALTER TABLE infer_views ADD COLUMN suspicion REAL;
    """,
]

KIOSK = [
    # 1: kiosk accounts, server-side sessions, the audit trail and clinician feedback (owned by kiosk_ui).
    #    kiosk_feedback rows are the labelled examples that local training reads.
    """
    CREATE TABLE kiosk_users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE COLLATE NOCASE,
        full_name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('doctor', 'technician', 'radiologist', 'admin')),
        password_hash TEXT NOT NULL,
        failed_count INTEGER NOT NULL DEFAULT 0,
        locked_until REAL,
        active INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        last_login_at REAL
    );
    CREATE TABLE kiosk_sessions (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES kiosk_users (id),
        csrf_token TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE INDEX kiosk_sessions_user ON kiosk_sessions (user_id);
    CREATE TABLE kiosk_audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        username TEXT NOT NULL,
        action TEXT NOT NULL,
        study_uid TEXT,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX kiosk_audit_study ON kiosk_audit (study_uid, at);
    CREATE TABLE kiosk_feedback (
        id INTEGER PRIMARY KEY,
        study_uid TEXT NOT NULL,
        username TEXT NOT NULL,
        role TEXT NOT NULL,
        agrees INTEGER NOT NULL,
        birads INTEGER NOT NULL CHECK (birads BETWEEN 0 AND 6),
        density TEXT NOT NULL CHECK (density IN ('A', 'B', 'C', 'D')),
        notes TEXT NOT NULL DEFAULT '',
        model_version TEXT,
        triage TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX kiosk_feedback_study ON kiosk_feedback (study_uid, created_at);
    CREATE INDEX ingest_studies_first_seen ON ingest_studies (first_seen);
    CREATE INDEX infer_results_triage ON infer_results (triage);
    """,
    # 2: failed sign-ins counted per typed name (a made-up name locks like a real one, so answers reveal no names),
    #    token buckets limiting failed sign-ins per client address and per name (shared by every process), and
    #    indexes for the audit view's filters. The lock state moves out of kiosk_users, live locks with it.
    """
    CREATE TABLE kiosk_signin_lockouts (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        failed_count INTEGER NOT NULL,
        locked_until REAL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX kiosk_signin_lockouts_updated ON kiosk_signin_lockouts (updated_at);
    INSERT INTO kiosk_signin_lockouts (name, failed_count, locked_until, updated_at)
        SELECT username, failed_count, locked_until, CAST(strftime('%s', 'now') AS REAL) FROM kiosk_users
        WHERE failed_count > 0 OR locked_until IS NOT NULL;
    ALTER TABLE kiosk_users DROP COLUMN failed_count;
    ALTER TABLE kiosk_users DROP COLUMN locked_until;
    CREATE TABLE kiosk_signin_buckets (
        key TEXT PRIMARY KEY,
        tokens REAL NOT NULL,
        at REAL NOT NULL,
        refused_noted_at REAL
    );
    CREATE INDEX kiosk_signin_buckets_at ON kiosk_signin_buckets (at);
    CREATE INDEX kiosk_audit_user ON kiosk_audit (username COLLATE NOCASE, id);
    CREATE INDEX kiosk_audit_action ON kiosk_audit (action, id);
    CREATE INDEX kiosk_audit_at ON kiosk_audit (at);
    """,
    # 3: BI-RADS and density are the radiologist's categories: optional, and recorded with where they came from
    #    (a radiologist's account, or a radiology report typed in by whoever holds it). Rows from the old form, which
    #    asked the family doctor for them, keep their values marked 'legacy' (radiologists' rows: 'radiologist').
    """
    CREATE TABLE kiosk_feedback_v3 (
        id INTEGER PRIMARY KEY,
        study_uid TEXT NOT NULL,
        username TEXT NOT NULL,
        role TEXT NOT NULL,
        agrees INTEGER NOT NULL,
        birads INTEGER CHECK (birads BETWEEN 0 AND 6),
        density TEXT CHECK (density IN ('A', 'B', 'C', 'D')),
        category_source TEXT CHECK (category_source IN ('radiologist', 'radiology_report', 'legacy')),
        notes TEXT NOT NULL DEFAULT '',
        model_version TEXT,
        triage TEXT,
        created_at REAL NOT NULL,
        CHECK ((birads IS NULL) = (density IS NULL) AND (birads IS NULL) = (category_source IS NULL))
    );
    INSERT INTO kiosk_feedback_v3 (id, study_uid, username, role, agrees, birads, density, category_source, notes, model_version,
                                   triage, created_at)
        SELECT id, study_uid, username, role, agrees, birads, density,
               CASE role WHEN 'radiologist' THEN 'radiologist' ELSE 'legacy' END, notes, model_version, triage, created_at
        FROM kiosk_feedback;
    DROP TABLE kiosk_feedback;
    ALTER TABLE kiosk_feedback_v3 RENAME TO kiosk_feedback;
    CREATE INDEX kiosk_feedback_study ON kiosk_feedback (study_uid, created_at);
    """,
    # 4: the kiosk's audit rows move into the box-wide hash-chained audit_log (edge_agent.audit), in their order, unsealed:
    #    the first append or `mammo audit verify` chains them. kiosk_audit stays as a read-only view of the whole trail
    #    for the audit page (a kiosk row's text is details.detail).
    """
    INSERT INTO audit_log (seq, at, actor, action, object, details, prev_hash, hash)
        SELECT (SELECT coalesce(max(seq), 0) FROM audit_log) + row_number() OVER (ORDER BY id), at, username, action, study_uid,
               CASE WHEN detail IS NULL OR detail = '' THEN '{}' ELSE json_object('detail', detail) END, NULL, NULL
        FROM kiosk_audit ORDER BY id;
    DROP TABLE kiosk_audit;
    CREATE VIEW kiosk_audit AS
        SELECT seq AS id, at, actor AS username, action, object AS study_uid,
               CASE WHEN details = '{}' THEN '' ELSE coalesce(json_extract(details, '$.detail'), details) END AS detail
        FROM audit_log;
    """,
    # 5: the clinic's work on a study (kiosk_workflow: first seen, referred, closed; "assessed" and "report received" follow
    #    from kiosk_feedback and kiosk_radiology_reports) and the radiologist's answer that closes the loop. Each report row
    #    is one entry (a later one, e.g. with the biopsy result, supersedes the earlier for that study); follow_up_due is
    #    when the woman must come back. Local training and the sync helpers read kiosk_radiology_reports: keep the column
    #    names and meanings (birads 0-6, density A-D, recommendation, biopsy_result malignant|benign|NULL, source
    #    radiologist|radiology_report, entered_by, created_at).
    """
    CREATE TABLE kiosk_workflow (
        study_uid TEXT PRIMARY KEY,
        seen_at REAL,
        seen_by TEXT,
        referred_at REAL,
        referred_by TEXT,
        closed_at REAL,
        closed_by TEXT
    );
    CREATE TABLE kiosk_radiology_reports (
        id INTEGER PRIMARY KEY,
        study_uid TEXT NOT NULL,
        birads INTEGER NOT NULL CHECK (birads BETWEEN 0 AND 6),
        density TEXT NOT NULL CHECK (density IN ('A', 'B', 'C', 'D')),
        recommendation TEXT NOT NULL CHECK (recommendation IN ('routine', 'short_interval', 'additional_imaging', 'biopsy')),
        biopsy_result TEXT CHECK (biopsy_result IN ('malignant', 'benign')),
        source TEXT NOT NULL CHECK (source IN ('radiologist', 'radiology_report')),
        entered_by TEXT NOT NULL,
        created_at REAL NOT NULL,
        follow_up_due REAL,
        notes TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX kiosk_radiology_reports_study ON kiosk_radiology_reports (study_uid, id);
    CREATE INDEX kiosk_radiology_reports_due ON kiosk_radiology_reports (follow_up_due);
    CREATE INDEX ingest_studies_pseudonym ON ingest_studies (pseudonym, first_seen);
    """,
    # 6: the worklist's first rank, incomplete studies, starts from the few incomplete results instead of walking every
    #    study in the window to find them (on a box with 10,000 recent studies, 15 ms of every worklist page for no row).
    """
    CREATE INDEX infer_results_incomplete ON infer_results (status) WHERE status = 'incomplete';
    """,
]

AUDIT = [
    # 1: the box's hash-chained audit trail (owned by edge_agent.audit): each entry's hash covers its fields and the
    #    previous entry's hash; audit_checkpoints holds the box identity key's signatures over the hash at some entries.
    #    Triggers refuse UPDATE and DELETE, except the one-time sealing of entries copied in from before the chain
    #    (hash still NULL). Anyone who can write the file can drop a trigger: the chain and the signed checkpoints are
    #    what detect that; the triggers only stop honest code and casual sqlite3 sessions.
    """
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        object TEXT,
        details TEXT NOT NULL DEFAULT '{}',
        prev_hash TEXT,
        hash TEXT
    );
    CREATE INDEX audit_log_actor ON audit_log (actor COLLATE NOCASE, seq);
    CREATE INDEX audit_log_action ON audit_log (action, seq);
    CREATE INDEX audit_log_at ON audit_log (at);
    CREATE INDEX audit_log_object ON audit_log (object, at);
    CREATE TABLE audit_checkpoints (
        seq INTEGER PRIMARY KEY,
        hash TEXT NOT NULL,
        at REAL NOT NULL,
        box_id TEXT NOT NULL,
        key_sha256 TEXT NOT NULL,
        signature TEXT NOT NULL
    );
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: entries cannot be deleted'); END;
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    WHEN OLD.hash IS NOT NULL OR NEW.seq IS NOT OLD.seq OR NEW.at IS NOT OLD.at OR NEW.actor IS NOT OLD.actor
         OR NEW.action IS NOT OLD.action OR NEW.object IS NOT OLD.object OR NEW.details IS NOT OLD.details
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: entries cannot be changed'); END;
    CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
    CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
    """,
]

# "audit" precedes "kiosk": kiosk migration 4 moves the kiosk's rows into audit_log, which must exist by then on an
# upgraded box as on a new one (each component's scripts run in turn, in this order).
# Components added in the session that built issues 12-16; each owner appends its scripts to its own list.
LEARNING: list[str] = [  # local DP training: privacy ledger, rounds, checkpoints, evaluation gate (edge_agent.learning)
    # 1: the privacy ledger. One generation per base model version with its (epsilon, delta) budget; one row per round,
    #    written BEFORE its first step with the composed epsilon it will have spent (reserved atomically, so a power cut
    #    never loses or doubles it), the studies it trains on (fixed for the round, so a resumed round is the same
    #    mechanism), the evaluation gate's comparison, and the policy's latest decisions with their reasons.
    """
    CREATE TABLE learning_generations (
        base_model_version TEXT PRIMARY KEY,
        epsilon_budget REAL NOT NULL CHECK (epsilon_budget > 0),
        delta REAL NOT NULL CHECK (delta > 0 AND delta < 1),
        created_at REAL NOT NULL
    );
    CREATE TABLE learning_rounds (
        round_id TEXT PRIMARY KEY,
        base_model_version TEXT NOT NULL REFERENCES learning_generations (base_model_version),
        state TEXT NOT NULL CHECK (state = 'reserved' OR state = 'running' OR state = 'paused' OR state = 'done'
                                   OR state = 'failed' OR state = 'released'),
        noise_multiplier REAL NOT NULL,
        max_grad_norm REAL NOT NULL,
        sample_rate REAL NOT NULL,
        steps INTEGER NOT NULL,
        steps_done INTEGER NOT NULL DEFAULT 0,
        delta REAL NOT NULL,
        epsilon_round REAL NOT NULL,
        epsilon_total REAL NOT NULL,
        examples INTEGER NOT NULL,
        seed INTEGER NOT NULL,
        update_id TEXT,
        detail TEXT NOT NULL DEFAULT '',
        reserved_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE UNIQUE INDEX learning_rounds_one_open ON learning_rounds (base_model_version)
        WHERE state = 'reserved' OR state = 'running' OR state = 'paused';
    CREATE TABLE learning_round_studies (
        round_id TEXT NOT NULL REFERENCES learning_rounds (round_id),
        study_uid TEXT NOT NULL,
        label INTEGER NOT NULL CHECK (label = 0 OR label = 1),
        PRIMARY KEY (round_id, study_uid)
    );
    CREATE TABLE learning_gate (
        round_id TEXT PRIMARY KEY REFERENCES learning_rounds (round_id),
        decision TEXT NOT NULL CHECK (decision = 'serve' OR decision = 'candidate'),
        active_auc REAL,
        adapted_auc REAL,
        margin REAL NOT NULL,
        n_studies INTEGER NOT NULL,
        n_positive INTEGER NOT NULL,
        reason TEXT NOT NULL,
        weights_path TEXT,
        at REAL NOT NULL
    );
    CREATE TABLE learning_decisions (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        train INTEGER NOT NULL,
        reasons TEXT NOT NULL,
        observed TEXT NOT NULL
    );
    """,
]

SYNC: list[str] = [  # the federated update outbox and sync state (sync.outbox, sync.service)
    # 1: the outbox of finished local updates (sync.outbox). One row per update_id; sha256 is the SHA-256 of the CKKS
    #    frame (NULL while the box has no startup kit and the delta waits sealed under the box keystore). No TTL: a row
    #    leaves 'queued'/'sending' only by an acknowledgement or a rejection from the coordinator. The payload (~1.2 MB)
    #    sits in its own table so listing the outbox never reads it; it is dropped once the update is acknowledged.
    """
    CREATE TABLE sync_outbox (
        update_id TEXT PRIMARY KEY,
        sha256 TEXT UNIQUE,
        base_model_version TEXT NOT NULL,
        spec TEXT NOT NULL,
        spec_digest TEXT NOT NULL,
        value_count INTEGER NOT NULL,
        example_count INTEGER NOT NULL CHECK (example_count > 0),
        epsilon REAL NOT NULL,
        delta_dp REAL NOT NULL,
        noise_multiplier REAL NOT NULL,
        local_metrics TEXT NOT NULL,
        he_version INTEGER,
        state TEXT NOT NULL CHECK (state = 'awaiting_kit' OR state = 'queued' OR state = 'sending'
                                   OR state = 'acknowledged' OR state = 'rejected'),
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        bytes INTEGER,
        created_at REAL NOT NULL,
        placed_at REAL NOT NULL,
        queued_at REAL,
        last_attempt_at REAL,
        closed_at REAL,
        CHECK ((state = 'awaiting_kit') = (sha256 IS NULL))
    );
    CREATE INDEX sync_outbox_open ON sync_outbox (placed_at, update_id) WHERE closed_at IS NULL;
    CREATE TABLE sync_outbox_payload (
        update_id TEXT PRIMARY KEY REFERENCES sync_outbox (update_id),
        kind TEXT NOT NULL CHECK (kind = 'ckks' OR kind = 'sealed'),
        data BLOB NOT NULL
    );
    """,
]
REPORTING: list[str] = [  # FHIR report delivery and SMS notices (edge_agent.reporting)
    # 1: one row per study and channel (fhir: the official FHIR endpoint; sms: one row per family-doctor number, target
    #    masked) with what happened last, so the kiosk, the console and `mammo report list` show it; the work itself is in
    #    the durable queue (report, notify). identifier is the stable key the receiver de-duplicates on (conditional
    #    create), so a resend after a crash or a restart never creates a second report. No patient data in any column.
    """
    CREATE TABLE reporting_deliveries (
        study_uid TEXT NOT NULL,
        channel TEXT NOT NULL CHECK (channel = 'fhir' OR channel = 'sms'),
        target TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL CHECK (state = 'disabled' OR state = 'awaiting_confirmation' OR state = 'queued' OR state = 'sending'
                                   OR state = 'retrying' OR state = 'delivered' OR state = 'failed'),
        detail TEXT NOT NULL DEFAULT '',
        identifier TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        delivered_at REAL,
        PRIMARY KEY (study_uid, channel, target)
    );
    CREATE INDEX reporting_deliveries_state ON reporting_deliveries (channel, state);
    CREATE INDEX reporting_deliveries_delivered ON reporting_deliveries (channel, delivered_at) WHERE delivered_at IS NOT NULL;
    """,
]
PACS: list[str] = [  # PACS export outbox and the modality worklist (edge_agent.pacs)
    # 1: per-destination export state (the job itself is in the queue, queue 'pacs'), the objects each destination has
    #    acknowledged (a resumed export skips them; resent ones keep their UIDs), each de-identified destination's own
    #    export key (sealed with the box master key), and the modality worklist. Worklist rows are identified data: the
    #    name, ID, birth date and accession number are sealed as ingest_reid's are; match_key (an HMAC of patient ID and
    #    accession under a box secret) finds the entry when the images arrive without naming anyone.
    """
    CREATE TABLE pacs_exports (
        study_uid TEXT NOT NULL,
        destination TEXT NOT NULL,
        mode TEXT NOT NULL CHECK (mode = 'identified' OR mode = 'deidentified'),
        job_id INTEGER,
        state TEXT NOT NULL CHECK (state IN ('queued', 'sending', 'retrying', 'sent', 'failed')),
        objects_total INTEGER NOT NULL DEFAULT 0,
        objects_sent INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        requested_by TEXT NOT NULL,
        requested_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        sent_at REAL,
        PRIMARY KEY (study_uid, destination)
    );
    CREATE INDEX pacs_exports_updated ON pacs_exports (updated_at);
    CREATE TABLE pacs_sent (
        destination TEXT NOT NULL,
        sop_uid TEXT NOT NULL,
        study_uid TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('image', 'sr', 'heatmap')),
        sent_at REAL NOT NULL,
        PRIMARY KEY (destination, sop_uid)
    );
    CREATE INDEX pacs_sent_study ON pacs_sent (study_uid, destination);
    CREATE TABLE pacs_keys (
        destination TEXT PRIMARY KEY,
        sealed BLOB NOT NULL,
        key_id TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE pacs_worklist (
        id INTEGER PRIMARY KEY,
        match_key TEXT NOT NULL UNIQUE,
        scheduled_day TEXT NOT NULL,
        scheduled_at REAL NOT NULL,
        sealed BLOB NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('scheduled', 'done')),
        study_uid TEXT,
        created_at REAL NOT NULL,
        done_at REAL
    );
    CREATE INDEX pacs_worklist_day ON pacs_worklist (scheduled_day, state);
    CREATE INDEX pacs_worklist_study ON pacs_worklist (study_uid) WHERE study_uid IS NOT NULL;
    """,
]

MIGRATIONS: dict[str, list[str]] = {
    "queue": QUEUE,
    "ingest": INGEST,
    "infer": INFER,
    "audit": AUDIT,
    "kiosk": KIOSK,
    "learning": LEARNING,
    "sync": SYNC,
    "reporting": REPORTING,
    "pacs": PACS,
}
