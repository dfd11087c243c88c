"""When is a screening study complete? A pure rule, and its bookkeeping in the box database.

A screening mammogram is four views: left and right breast, each
cranio-caudal (CC) and medio-lateral oblique (MLO). A study is complete when
all four are in, or when nothing new arrived for a while (a repeat view, a
missing one, a diagnostic work-up): then it is triaged with what it has.
Only MG studies are triaged; other modalities are stored but never queued.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import sqlite_utils

from edge_agent.ingest.records import Fix, StudyRef

SCREENING_VIEWS = frozenset({("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")})
FOUR_VIEWS = "four_views"
STABLE_TIMEOUT = "stable_timeout"


def completion(views: Iterable[tuple[str, str]], last_seen: float, now: float, timeout_s: float) -> str | None:
    """The reason a mammography study is complete, or None while it should wait for more images."""
    if SCREENING_VIEWS <= {(lat, view) for lat, view in views}:
        return FOUR_VIEWS
    if now - last_seen >= timeout_s:
        return STABLE_TIMEOUT
    return None


def record_instance(db: sqlite_utils.Database, *, study_uid: str, pseudonym: str, modality: str, now: float) -> None:
    db.execute(
        "INSERT INTO ingest_studies (study_uid, pseudonym, modality, first_seen, last_seen, state)"
        " VALUES (?, ?, ?, ?, ?, 'open')"
        " ON CONFLICT (study_uid) DO UPDATE SET last_seen = excluded.last_seen,"
        "   modality = CASE WHEN excluded.modality = 'MG' THEN 'MG' ELSE ingest_studies.modality END",
        [study_uid, pseudonym, modality, now, now],
    )


def views_of(db: sqlite_utils.Database, study_uid: str) -> list[tuple[str, str]]:
    return [tuple(r) for r in db.execute(
        "SELECT laterality, view FROM ingest_instances WHERE study_uid = ? AND modality = 'MG'", [study_uid]
    ).fetchall()]


def mark_if_complete(db: sqlite_utils.Database, study_uid: str, now: float, timeout_s: float) -> str | None:
    """Close the study if the rule says so; returns the reason when this call closed it."""
    row = db.execute("SELECT modality, state, last_seen FROM ingest_studies WHERE study_uid = ?", [study_uid]).fetchone()
    if row is None or row[0] != "MG" or row[1] != "open":
        return None
    reason = completion(views_of(db, study_uid), row[2], now, timeout_s)
    if reason:
        db.execute(
            "UPDATE ingest_studies SET state = 'complete', complete_reason = ?, completed_at = ? WHERE study_uid = ? AND state = 'open'",
            [reason, now, study_uid],
        )
    return reason


def stale_open_studies(db: sqlite_utils.Database, now: float, timeout_s: float) -> list[str]:
    return [r[0] for r in db.execute(
        "SELECT study_uid FROM ingest_studies WHERE state = 'open' AND modality = 'MG' AND last_seen <= ?", [now - timeout_s]
    ).fetchall()]


def unqueued_complete(db: sqlite_utils.Database) -> list[str]:
    return [r[0] for r in db.execute("SELECT study_uid FROM ingest_studies WHERE state = 'complete' AND infer_job_id IS NULL").fetchall()]


def study_ref(db: sqlite_utils.Database, study_uid: str) -> StudyRef:
    study = db.execute("SELECT pseudonym, modality, complete_reason FROM ingest_studies WHERE study_uid = ?", [study_uid]).fetchone()
    rows = db.execute(
        "SELECT digest, laterality, view FROM ingest_instances WHERE study_uid = ? ORDER BY laterality, view, sop_uid", [study_uid]
    ).fetchall()
    return StudyRef(
        study_uid=study_uid, pseudonym=study[0], modality=study[1],
        instance_digests=tuple(r[0] for r in rows),
        views=tuple(f"{r[1] or '?'}-{r[2] or '?'}" for r in rows),
        complete_reason=study[2] or "",
    )


def set_job(db: sqlite_utils.Database, study_uid: str, job_id: int) -> None:
    db.execute("UPDATE ingest_studies SET infer_job_id = ? WHERE study_uid = ?", [job_id, study_uid])


def fixes_json(fixes: Iterable[Fix]) -> str:
    return json.dumps([{"code": f.code, "message": f.message, "tag": f.tag} for f in fixes], ensure_ascii=False)
