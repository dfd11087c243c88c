"""SQL over the clinic's work on studies: workflow facts, the radiologist's reports, the recall list, today's counts.

Functions of a database handle and plain values; :class:`kiosk_ui.services.KioskServices`
owns the transactions and the audit entries around them. The tables are
the kiosk's own (schema KIOSK 5): kiosk_workflow and kiosk_radiology_reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlite_utils

from kiosk_ui.records import DayCounts, Identity, PriorStudy, RadiologyReport, RecallRow
from kiosk_ui.workflow import WORKFLOW_SQL, is_overdue

# The status of a study, in SQL, mirroring records.study_status.
STATUS_SQL = """CASE
    WHEN r.status IS NOT NULL THEN r.status
    WHEN s.state = 'open' THEN 'receiving'
    WHEN j.state = 'leased' THEN 'analysing'
    WHEN j.state = 'dead' THEN 'failed'
    ELSE 'waiting' END"""

_REPORT_COLUMNS = ("r.study_uid, r.birads, r.density, r.recommendation, r.biopsy_result, r.source, r.entered_by, r.created_at,"
                   " r.follow_up_due, r.notes, coalesce(u.full_name, r.entered_by)")


def _report(row: Sequence[Any]) -> RadiologyReport:
    return RadiologyReport(*row)


def _stamp(db: sqlite_utils.Database, study_uid: str, column: str, username: str, now: float, *, only_first: bool) -> bool:
    """Set ``column``_at/_by on the study's workflow row; with ``only_first`` keep an earlier stamp. True when written."""
    db.execute("INSERT OR IGNORE INTO kiosk_workflow (study_uid) SELECT study_uid FROM ingest_studies WHERE study_uid = ?", [study_uid])
    guard = f" AND {column}_at IS NULL" if only_first else ""
    cur = db.execute(f"UPDATE kiosk_workflow SET {column}_at = ?, {column}_by = ? WHERE study_uid = ?{guard}", [now, username, study_uid])
    return bool(cur.rowcount)


def mark_seen(db: sqlite_utils.Database, study_uid: str, username: str, now: float) -> bool:
    return _stamp(db, study_uid, "seen", username, now, only_first=True)


def mark_referred(db: sqlite_utils.Database, study_uid: str, username: str, now: float) -> bool:
    return _stamp(db, study_uid, "referred", username, now, only_first=True)


def set_closed(db: sqlite_utils.Database, study_uid: str, username: str, now: float, closed: bool) -> None:
    if closed:
        _stamp(db, study_uid, "closed", username, now, only_first=False)
    else:
        db.execute("UPDATE kiosk_workflow SET closed_at = NULL, closed_by = NULL WHERE study_uid = ?", [study_uid])


def workflow_of(db: sqlite_utils.Database, study_uid: str) -> str:
    row = db.execute(f"SELECT {WORKFLOW_SQL} FROM ingest_studies s LEFT JOIN kiosk_workflow w ON w.study_uid = s.study_uid"
                     " WHERE s.study_uid = ?", [study_uid]).fetchone()
    return row[0] if row else "new"


def workflows_of(db: sqlite_utils.Database, study_uids: Sequence[str]) -> dict[str, str]:
    """The workflow state of each of these studies, in one query (the worklist asks for the rows it shows)."""
    if not study_uids:
        return {}
    return {r[0]: r[1] for r in db.execute(
        f"SELECT s.study_uid, {WORKFLOW_SQL} FROM ingest_studies s LEFT JOIN kiosk_workflow w ON w.study_uid = s.study_uid"
        f" WHERE s.study_uid IN ({','.join('?' * len(study_uids))})", list(study_uids))}


def reports_of(db: sqlite_utils.Database, study_uid: str) -> tuple[RadiologyReport, ...]:
    return tuple(_report(r) for r in db.execute(
        f"SELECT {_REPORT_COLUMNS} FROM kiosk_radiology_reports r LEFT JOIN kiosk_users u ON u.username = r.entered_by"
        " WHERE r.study_uid = ? ORDER BY r.id", [study_uid]))


def add_report(db: sqlite_utils.Database, report: RadiologyReport) -> None:
    db.execute("INSERT INTO kiosk_radiology_reports (study_uid, birads, density, recommendation, biopsy_result, source, entered_by,"
               " created_at, follow_up_due, notes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               [report.study_uid, report.birads, report.density, report.recommendation, report.biopsy_result, report.source,
                report.entered_by, report.created_at, report.follow_up_due, report.notes])


def priors_of(db: sqlite_utils.Database, study_uid: str, pseudonym: str) -> tuple[PriorStudy, ...]:
    """Earlier studies of the same woman (same pseudonym), newest first."""
    return tuple(PriorStudy(r[0], r[1], r[2], r[3], _views(db, r[0])) for r in db.execute(
        f"SELECT s.study_uid, s.first_seen, r.triage, {STATUS_SQL} FROM ingest_studies s"
        " LEFT JOIN infer_results r ON r.study_uid = s.study_uid LEFT JOIN jobs j ON j.id = s.infer_job_id"
        " WHERE s.pseudonym = ? AND s.study_uid != ? AND s.first_seen <= (SELECT first_seen FROM ingest_studies WHERE study_uid = ?)"
        " ORDER BY s.first_seen DESC LIMIT 10", [pseudonym, study_uid, study_uid]))


def _views(db: sqlite_utils.Database, study_uid: str) -> tuple[tuple[str, str, str], ...]:
    return tuple((r[0], r[1], r[2]) for r in db.execute(
        "SELECT laterality, view, sop_uid FROM ingest_instances WHERE study_uid = ? AND modality = 'MG' ORDER BY received_at", [study_uid]))


def day_counts(db: sqlite_utils.Database, since: float) -> DayCounts:
    row = db.execute(
        f"SELECT count(*), sum(r.triage = 'priority_radiologist_review'), sum(({WORKFLOW_SQL}) = 'new') FROM ingest_studies s"
        " LEFT JOIN infer_results r ON r.study_uid = s.study_uid LEFT JOIN kiosk_workflow w ON w.study_uid = s.study_uid"
        " WHERE s.first_seen >= ?", [since]).fetchone()
    return DayCounts(row[0] or 0, row[1] or 0, row[2] or 0)


def recalls(db: sqlite_utils.Database, now: float, identity: Callable[[str], Identity]) -> list[RecallRow]:
    """Each woman's latest report with a follow-up day, unless she has come back since (a newer study of hers arrived)
    or the biopsy found cancer (she is in treatment, not in screening). Soonest due first; overdue ones lead."""
    rows = db.execute(
        f"SELECT {_REPORT_COLUMNS}, s.pseudonym FROM kiosk_radiology_reports r JOIN ingest_studies s ON s.study_uid = r.study_uid"
        " LEFT JOIN kiosk_users u ON u.username = r.entered_by"
        " WHERE r.id = (SELECT max(id) FROM kiosk_radiology_reports x JOIN ingest_studies xs ON xs.study_uid = x.study_uid"
        "               WHERE xs.pseudonym = s.pseudonym)"
        " AND r.follow_up_due IS NOT NULL AND (r.biopsy_result IS NULL OR r.biopsy_result != 'malignant')"
        " AND NOT EXISTS (SELECT 1 FROM ingest_studies n WHERE n.pseudonym = s.pseudonym AND n.first_seen > s.first_seen)"
        " ORDER BY r.follow_up_due").fetchall()
    return [RecallRow(r[0], r[11], identity(r[11]), _report(r[:11]), r[8], is_overdue(r[8], now)) for r in rows]
