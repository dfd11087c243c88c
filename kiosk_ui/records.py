"""What the kiosk's pages show: frozen records built by :mod:`kiosk_ui.services`, never raw SQLite rows."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

from edge_agent.clinic_time import midnight

STATUSES = ("receiving", "waiting", "analysing", "done", "incomplete", "failed")
PENDING = frozenset({"receiving", "waiting", "analysing"})
TRIAGES = ("priority_radiologist_review", "radiologist_review", "no_suspicious_finding")
DENSITIES = ("A", "B", "C", "D")
BIRADS = tuple(range(7))
SCREENING_VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))  # the order the doctor reads them in
# Where a feedback row's BI-RADS and density came from. A family doctor's own pick is never one of them: those are the
# radiologist's categories. "legacy" marks rows from the form that asked the family doctor for them (kiosk migration 3).
CATEGORY_SOURCES = ("radiologist", "radiology_report", "legacy")


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
class Problem:
    """Why an incomplete study has no result: a screening view ``missing``, one ``unreadable``, or ``other``."""

    kind: str
    laterality: str = ""
    view: str = ""


_UNREADABLE = re.compile(r"^unreadable: ([LR?])-([A-Z?]+)")


def study_problems(status: str, reasons: Iterable[str], present: Iterable[tuple[str, str]]) -> tuple[Problem, ...]:
    """What is wrong with an incomplete study, from the views that arrived and the worker's reasons (English, for logs).

    Missing views come from what is stored, not from the reasons, so a view that arrived but could not be read is
    reported once, as unreadable.
    """
    if status != "incomplete":
        return ()
    have = set(present)
    out = [Problem("missing", lat, view) for lat, view in SCREENING_VIEWS if (lat, view) not in have]
    for reason in reasons:
        m = _UNREADABLE.match(reason)
        if m and Problem("unreadable", m[1], m[2]) not in out:
            out.append(Problem("unreadable", m[1], m[2]))
    return tuple(out) or (Problem("other"),)


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
    def unknown(cls) -> Identity:
        return cls("", "", "")


@dataclass(frozen=True)
class StatusBar:
    online: bool
    outbox_waiting: int
    last_sync_at: float | None
    model_version: str | None
    profile: str | None
    free_disk_bytes: int
    enrolled: bool = True  # False: demo mode, the box runs only the releases shipped with the software


@dataclass(frozen=True)
class WorklistQuery:
    q: str = ""
    status: str = ""
    triage: str = ""
    days: int | None = None  # None: the settings' default window; 0: no limit
    flow: str = ""  # a workflow state (kiosk_ui.workflow.WORKFLOW_STATES) or "" for all


@dataclass(frozen=True)
class DayCounts:
    """The top of the worklist: today's studies (clinic's day), how many are priority and how many nobody has opened."""

    studies: int
    priority: int
    new: int


@dataclass(frozen=True)
class RadiologyReport:
    """The radiologist's answer to a referral, entered from a radiologist's account or copied from the paper report."""

    study_uid: str
    birads: int
    density: str
    recommendation: str
    biopsy_result: str | None
    source: str  # 'radiologist' | 'radiology_report'
    entered_by: str
    created_at: float
    follow_up_due: float | None = None
    notes: str = ""
    full_name: str = ""


@dataclass(frozen=True)
class ReportInput:
    birads: int
    density: str
    recommendation: str
    biopsy_result: str | None = None
    follow_up_day: str = ""  # YYYY-MM-DD from the report, or "" for the recommendation's interval
    notes: str = ""


@dataclass(frozen=True)
class RecallRow:
    """A woman who must come back: her latest report, when she is due, and whether that day has passed."""

    study_uid: str
    pseudonym: str
    identity: Identity
    report: RadiologyReport
    due_at: float
    overdue: bool


@dataclass(frozen=True)
class PriorStudy:
    study_uid: str
    arrived_at: float
    triage: str | None
    status: str
    views: tuple[tuple[str, str, str], ...] = ()  # (laterality, view, sop_uid): hung beside the current study's views

    def view_of(self, laterality: str, view: str) -> str | None:
        """The SOP UID of the same view in this earlier study, or None."""
        return next((sop for lat, v, sop in self.views if (lat, v) == (laterality, view)), None)


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
    problems: tuple[Problem, ...] = ()
    workflow: str = "new"


@dataclass(frozen=True)
class ViewResult:
    sop_uid: str
    laterality: str
    view: str
    p_abnormal: float | None
    p_malignant: float | None
    has_heatmap: bool
    suspicion: float | None = None  # the view's triage score (this breast against the other): what the kiosk shows

    @property
    def label(self) -> str:
        return f"{self.laterality or '?'}-{self.view or '?'}"


@dataclass(frozen=True)
class FeedbackEntry:
    username: str
    role: str
    agrees: bool
    birads: int | None
    density: str | None
    notes: str
    created_at: float
    category_source: str | None = None
    full_name: str = ""


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
    problems: tuple[Problem, ...] = ()
    workflow: str = "new"
    reports: tuple[RadiologyReport, ...] = ()
    priors: tuple[PriorStudy, ...] = ()

    @property
    def report(self) -> RadiologyReport | None:
        """The latest radiology report (a later entry, e.g. with the biopsy result, supersedes an earlier one)."""
        return self.reports[-1] if self.reports else None

    @property
    def pending(self) -> bool:
        return self.status in PENDING

    @property
    def has_result(self) -> bool:
        """A triage category to show: an incomplete study has none, whatever scores its views got."""
        return bool(self.triage) and self.status == "done"

    def categories(self) -> FeedbackEntry | None:
        """The latest BI-RADS and density recorded by a radiologist or from a radiology report, or None."""
        return next((f for f in reversed(self.feedback) if f.birads is not None and f.category_source in CATEGORY_SOURCES[:2]), None)

    def doctor_notes(self) -> FeedbackEntry | None:
        """The latest entry with notes (the referring doctor's clinical notes travel with the referral)."""
        return next((f for f in reversed(self.feedback) if f.notes.strip()), None)


@dataclass(frozen=True)
class FeedbackInput:
    agrees: bool
    notes: str
    birads: int | None = None  # only with category_source: from a radiologist's account or a radiology report
    density: str | None = None
    category_source: str | None = None


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


AUDIT_PAGE_SIZE = 100
# Every action in the box's audit trail (edge_agent.audit), in the order the filter offers them: the kiosk's, then the box's.
AUDIT_ACTIONS = ("login", "login_failed", "login_locked", "account_locked", "login_throttled", "logout", "session_expired",
                 "view_worklist", "search_worklist", "view_study", "view_image", "print_referral", "export_referral",
                 "feedback", "radiology_report", "study_close", "study_reopen", "view_recalls", "upload", "user_add", "user_passwd",
                 "user_unlock",
                 "config_changed", "provision_install", "model_activate", "research_export", "quarantine_release",
                 "quarantine_purge", "audit_export")


@dataclass(frozen=True)
class AuditQuery:
    """The audit view's filters: user and action exact (user ignoring ASCII case), days as ISO dates, both ends inclusive."""

    username: str = ""
    action: str = ""
    study_uid: str = ""
    since_day: str = ""  # YYYY-MM-DD
    until_day: str = ""
    page: int = 1

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> AuditQuery:
        """From the page's query parameters; a malformed date or page is ignored rather than refused."""
        page = params.get("page", "")
        return cls(username=params.get("user", "").strip()[:64], action=params.get("action", "").strip()[:64],
                   study_uid=params.get("study", "").strip()[:128], since_day=_iso_day(params.get("from", "")),
                   until_day=_iso_day(params.get("to", "")), page=int(page) if page.isdigit() and 0 < int(page) <= 100000 else 1)

    def link(self, page: int) -> str:
        """The query string of another page of the same filters."""
        pairs = [("user", self.username), ("action", self.action), ("study", self.study_uid), ("from", self.since_day),
                 ("to", self.until_day), ("page", str(page) if page > 1 else "")]
        return urlencode([(k, v) for k, v in pairs if v])

    def bounds(self, tz: str) -> tuple[float | None, float | None]:
        """[since, until) in epoch seconds: the clinic's midnight (zone ``tz``) of since_day, and the one after until_day."""
        since = midnight(dt.date.fromisoformat(self.since_day), tz) if self.since_day else None
        until = midnight(dt.date.fromisoformat(self.until_day) + dt.timedelta(days=1), tz) if self.until_day else None
        return since, until


@dataclass(frozen=True)
class AuditPage:
    entries: tuple[AuditEntry, ...]
    query: AuditQuery
    has_next: bool
    actions: tuple[str, ...] = AUDIT_ACTIONS


def _iso_day(text: str) -> str:
    try:
        return dt.date.fromisoformat(text.strip()).isoformat() if len(text.strip()) == 10 else ""
    except ValueError:
        return ""
