"""Records that leave the ingest package: what happened to one file, and which study it joined.

None of these carries patient identity: UIDs are the de-identified ones, and
``label`` is whatever the caller used to name the input (a path on the
command line) and is shown to the person who gave it, never stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ACCEPTED = "accepted"
FIXED = "fixed"
QUARANTINED = "quarantined"


@dataclass(frozen=True)
class Fix:
    """One repair made to a file, shown to the technician.

    ``before``/``after`` hold technical values only (VRs, UIDs kinds, codes),
    never a name or an ID.
    """

    code: str
    message: str
    tag: str = ""


@dataclass(frozen=True)
class IngestResult:
    """The outcome for one input file: accepted, fixed (accepted after repairs) or quarantined."""

    label: str
    outcome: str
    fixes: tuple[Fix, ...] = ()
    reason_code: str = ""
    reason: str = ""
    digest: str = ""
    study_uid: str = ""
    sop_instance_uid: str = ""
    modality: str = ""
    laterality: str = ""
    view: str = ""
    duplicate: bool = False
    quarantine_id: int | None = None
    infer_job_id: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def kept(self) -> bool:
        """True for every outcome: quarantine keeps the file too (quarantine, never loss)."""
        return self.outcome in (ACCEPTED, FIXED, QUARANTINED)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["fixes"] = [asdict(f) for f in self.fixes]
        d["notes"] = list(self.notes)
        return d


@dataclass(frozen=True)
class StudyRef:
    """A de-identified study as the rest of the box sees it (the payload of an ``infer`` job)."""

    study_uid: str
    pseudonym: str
    modality: str
    instance_digests: tuple[str, ...]
    views: tuple[str, ...]
    complete_reason: str

    def to_payload(self) -> dict[str, Any]:
        """What a queued job carries: de-identified UIDs and image digests; not even the pseudonym (it links studies)."""
        return {
            "study_uid": self.study_uid,
            "modality": self.modality,
            "instances": list(self.instance_digests),
            "views": list(self.views),
            "complete_reason": self.complete_reason,
        }


@dataclass(frozen=True)
class QuarantineEntry:
    """A quarantined file as listed by ``mammo quarantine list``: metadata only, the file stays sealed."""

    id: int
    digest: str
    reason_code: str
    reason: str
    source: str
    received_at: float
    status: str
    size: int
    fixes: tuple[Fix, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["fixes"] = [asdict(f) for f in self.fixes]
        return d
