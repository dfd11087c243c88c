"""What one screening report says, read from the box's tables into one frozen record.

This is the only module of the package that reads other components' tables
(ingest, inference, kiosk, audit) and the one place that opens the sealed
re-identification map for reporting: everything after it (the Bundle, the
SMS, the e-Nabız adapter) is a pure function of :class:`ScreeningFacts`.

Tables another component may not have created yet (``kiosk_radiology_reports``,
``kiosk_workflow``) are read when present and skipped when not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlite_utils

from edge_agent.errors import ReportingError
from provisioning.envelope import open_sealed

#: Where a BI-RADS / density pair may come from to be reported: a radiologist's own account, or a radiology report
#: typed in from paper. The family doctor's pick and the kiosk's old 'legacy' rows never are.
CONFIRMED_SOURCES = ("radiologist", "radiology_report")
#: Kiosk audit actions that mean a referral letter was made for the study.
REFERRAL_ACTIONS = ("print_referral", "export_referral")
PRIORITY = "priority_radiologist_review"


@dataclass(frozen=True)
class PatientIdentity:
    """The woman as the modality named her: decrypted on the box, only to build the official report."""

    name: str  # DICOM PN: FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX
    patient_id: str
    birth_date: str  # YYYYMMDD or empty
    issuer: str


@dataclass(frozen=True)
class ViewInstance:
    sop_uid: str
    series_uid: str
    sop_class: str
    laterality: str
    view: str
    modality: str


@dataclass(frozen=True)
class AiResult:
    status: str  # done | incomplete | failed
    triage: str | None
    study_score: float | None
    reasons: tuple[str, ...]
    model_version: str
    manifest_sha256: str | None  # of the activation that produced it; None for a result no activation explains
    profile: str
    created_at: float


@dataclass(frozen=True)
class Confirmation:
    """A radiologist's categories for the study (the latest entry wins)."""

    birads: int
    density: str
    source: str  # radiologist | radiology_report
    entered_by: str
    created_at: float
    recommendation: str | None = None
    biopsy_result: str | None = None


@dataclass(frozen=True)
class Referral:
    made_at: float
    by: str  # the kiosk account's full name (or user name)


@dataclass(frozen=True)
class ScreeningFacts:
    box_id: str
    box_name: str
    box_city: str
    study_uid: str
    pseudonym: str
    received_at: float
    identity: PatientIdentity | None  # None: the map entry is missing or damaged (the report then cannot be sent)
    instances: tuple[ViewInstance, ...]
    ai: AiResult | None
    confirmation: Confirmation | None
    referral: Referral | None

    @property
    def priority(self) -> bool:
        return self.ai is not None and self.ai.status == "done" and self.ai.triage == PRIORITY


def table_exists(db: sqlite_utils.Database, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", [name]).fetchone() is not None


def gather(db: sqlite_utils.Database, study_uid: str, *, box_id: str, box_name: str, box_city: str,
           master_key: bytes | None) -> ScreeningFacts:
    """Everything a report on ``study_uid`` needs; ``master_key`` None leaves the identity out (the SMS needs none)."""
    row = db.execute("SELECT pseudonym, first_seen FROM ingest_studies WHERE study_uid = ?", [study_uid]).fetchone()
    if row is None:
        raise ReportingError(f"No study {study_uid[:40]!r} on this box. Fix: check the UID with `mammo report list`.")
    pseudonym, received_at = str(row[0]), float(row[1])
    instances = tuple(ViewInstance(*r) for r in db.execute(
        "SELECT sop_uid, series_uid, sop_class, laterality, view, modality FROM ingest_instances WHERE study_uid = ?"
        " ORDER BY series_uid, received_at, sop_uid", [study_uid]))
    return ScreeningFacts(
        box_id=box_id, box_name=box_name, box_city=box_city, study_uid=study_uid, pseudonym=pseudonym, received_at=received_at,
        identity=identity_of(db, pseudonym, master_key) if master_key is not None else None,
        instances=instances, ai=ai_result(db, study_uid), confirmation=confirmation(db, study_uid), referral=referral(db, study_uid),
    )


def identity_of(db: sqlite_utils.Database, pseudonym: str, master_key: bytes) -> PatientIdentity | None:
    """The sealed re-identification entry, opened as ``IngestService.identity_of`` opens it for the kiosk's screen."""
    row = db.execute("SELECT sealed FROM ingest_reid WHERE pseudonym = ?", [pseudonym]).fetchone()
    if row is None:
        return None
    try:
        plain = json.loads(open_sealed(master_key, row[0], b"mammo-reid:" + pseudonym.encode()).decode("utf-8"))
    except Exception:  # damaged or sealed by another box: report it as missing, the sender says why
        return None
    return PatientIdentity(str(plain.get("name") or ""), str(plain.get("patient_id") or ""), str(plain.get("birth_date") or ""),
                           str(plain.get("issuer") or ""))


def ai_result(db: sqlite_utils.Database, study_uid: str) -> AiResult | None:
    row = db.execute("SELECT status, triage, study_score, reasons, model_version, profile, created_at FROM infer_results WHERE study_uid = ?",
                     [study_uid]).fetchone()
    if row is None:
        return None
    manifest = db.execute("SELECT manifest_sha256 FROM model_activations WHERE version = ? AND activated_at <= ? ORDER BY id DESC LIMIT 1",
                          [row[4], row[6]]).fetchone()
    try:
        reasons = tuple(str(r) for r in json.loads(row[3]))
    except (TypeError, ValueError):
        reasons = ()
    return AiResult(row[0], row[1], row[2], reasons, row[4], manifest[0] if manifest else None, row[5], float(row[6]))


def confirmation(db: sqlite_utils.Database, study_uid: str) -> Confirmation | None:
    """The latest radiologist-confirmed categories: the kiosk's radiology reports first, then confirmed feedback rows."""
    if table_exists(db, "kiosk_radiology_reports"):
        r = db.execute("SELECT birads, density, source, entered_by, created_at, recommendation, biopsy_result FROM kiosk_radiology_reports"
                       " WHERE study_uid = ? AND source IN (?, ?) ORDER BY id DESC LIMIT 1", [study_uid, *CONFIRMED_SOURCES]).fetchone()
        if r is not None:
            return Confirmation(int(r[0]), str(r[1]), str(r[2]), _full_name(db, str(r[3])), float(r[4]), r[5], r[6])
    r = db.execute("SELECT birads, density, category_source, username, created_at FROM kiosk_feedback"
                   " WHERE study_uid = ? AND birads IS NOT NULL AND category_source IN (?, ?) ORDER BY id DESC LIMIT 1",
                   [study_uid, *CONFIRMED_SOURCES]).fetchone()
    return Confirmation(int(r[0]), str(r[1]), str(r[2]), _full_name(db, str(r[3])), float(r[4])) if r is not None else None


def referral(db: sqlite_utils.Database, study_uid: str) -> Referral | None:
    """When the study was referred: the kiosk's workflow record where it has one, else the first referral letter in the audit trail."""
    if table_exists(db, "kiosk_workflow"):
        r = db.execute("SELECT referred_at, referred_by FROM kiosk_workflow WHERE study_uid = ? AND referred_at IS NOT NULL",
                       [study_uid]).fetchone()
        if r is not None:
            return Referral(float(r[0]), _full_name(db, str(r[1] or "")))
    r = db.execute(f"SELECT at, actor FROM audit_log WHERE object = ? AND action IN ({','.join('?' * len(REFERRAL_ACTIONS))})"
                   " ORDER BY seq LIMIT 1", [study_uid, *REFERRAL_ACTIONS]).fetchone()
    return Referral(float(r[0]), _full_name(db, str(r[1]))) if r is not None else None


def _full_name(db: sqlite_utils.Database, username: str) -> str:
    if not username or not table_exists(db, "kiosk_users"):
        return username
    r = db.execute("SELECT full_name FROM kiosk_users WHERE username = ?", [username]).fetchone()
    return str(r[0]) if r and r[0] else username


def study_uids_awaiting(db: sqlite_utils.Database) -> list[str]:
    """Studies whose FHIR report waits for a radiologist and now has one (the sweep queues them): one indexed query."""
    marks = ",".join("?" * len(CONFIRMED_SOURCES))
    confirmed = [f"EXISTS (SELECT 1 FROM kiosk_feedback f WHERE f.study_uid = d.study_uid AND f.birads IS NOT NULL AND f.category_source IN ({marks}))"]
    args: list[str] = list(CONFIRMED_SOURCES)
    if table_exists(db, "kiosk_radiology_reports"):
        confirmed.append(f"EXISTS (SELECT 1 FROM kiosk_radiology_reports k WHERE k.study_uid = d.study_uid AND k.source IN ({marks}))")
        args += list(CONFIRMED_SOURCES)
    return [r[0] for r in db.execute("SELECT d.study_uid FROM reporting_deliveries d WHERE d.channel = 'fhir' AND d.state = 'awaiting_confirmation'"
                                     f" AND ({' OR '.join(confirmed)}) ORDER BY d.updated_at", args)]
