"""What the kiosk's pages show: frozen records built by :mod:`kiosk_ui.services`, never raw SQLite rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

STATUSES = ("receiving", "waiting", "analysing", "done", "incomplete", "failed")
PENDING = frozenset({"receiving", "waiting", "analysing"})
TRIAGES = ("priority_radiologist_review", "radiologist_review", "no_suspicious_finding")
DENSITIES = ("A", "B", "C", "D")
BIRADS = tuple(range(7))


def study_status(ingest_state: str, job_state: str | None, result_status: str | None) -> str:
    """One word for where a study is, from the ingest state, its infer job and its result."""
    if result_status:
        return result_status
    if ingest_state == "open":
        return "receiving"
    if job_state == "leased":
        return "analysing"
    if job_state == "dead":
        return "failed"
    return "waiting"


def triage_rank(triage: str | None) -> int:
    """Sort key: priority review first, then review, then everything else."""
    return {"priority_radiologist_review": 0, "radiologist_review": 1}.get(triage or "", 2)


@dataclass(frozen=True)
class User:
    id: int
    username: str
    full_name: str
    role: str


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    token_hash: str
    last_seen: float


@dataclass(frozen=True)
class Identity:
    """The real person behind a pseudonym: decrypted on the box for the kiosk's screen, never stored in clear."""

    name: str
    patient_id: str
    birth_date: str

    @classmethod
    def unknown(cls) -> "Identity":
        return cls("", "", "")


@dataclass(frozen=True)
class StatusBar:
    online: bool
    outbox_waiting: int
    last_sync_at: float | None
    model_version: str | None
    profile: str | None
    free_disk_bytes: int


@dataclass(frozen=True)
class WorklistQuery:
    q: str = ""
    status: str = ""
    triage: str = ""
    days: int | None = None  # None: the settings' default window; 0: no limit


@dataclass(frozen=True)
class WorklistRow:
    study_uid: str
    pseudonym: str
    identity: Identity
    arrived_at: float
    status: str
    triage: str | None
    study_score: float | None
    image_count: int


@dataclass(frozen=True)
class ViewResult:
    sop_uid: str
    laterality: str
    view: str
    p_abnormal: float | None
    p_malignant: float | None
    has_heatmap: bool

    @property
    def label(self) -> str:
        return f"{self.laterality or '?'}-{self.view or '?'}"


@dataclass(frozen=True)
class FeedbackEntry:
    username: str
    role: str
    agrees: bool
    birads: int
    density: str
    notes: str
    created_at: float


@dataclass(frozen=True)
class StudyView:
    study_uid: str
    pseudonym: str
    identity: Identity
    arrived_at: float
    status: str
    triage: str | None
    study_score: float | None
    breast_scores: Mapping[str, float]
    reasons: tuple[str, ...]
    model_version: str | None
    profile: str | None
    views: tuple[ViewResult, ...]
    feedback: tuple[FeedbackEntry, ...] = field(default_factory=tuple)

    @property
    def pending(self) -> bool:
        return self.status in PENDING


@dataclass(frozen=True)
class FeedbackInput:
    agrees: bool
    birads: int
    density: str
    notes: str


@dataclass(frozen=True)
class UploadOutcome:
    """One uploaded file's fate: ``ok`` when stored; ``message_key`` and ``params`` say what happened, in the catalog's words."""

    filename: str
    ok: bool
    message_key: str
    params: Mapping[str, str] = field(default_factory=dict)
    study_uid: str = ""


@dataclass(frozen=True)
class AuditEntry:
    at: float
    username: str
    action: str
    study_uid: str | None
    detail: str
