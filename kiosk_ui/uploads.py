"""USB upload: the checks made before a file reaches the ingest service, as pure functions, and one file's trip through it.

The kiosk refuses, and stores nothing for, a file whose name tries to
climb out of its folder, a file bigger than the ingest limit, and a file
that is not a DICOM Part 10 file (no 'DICM' at byte 128, as every file on
DICOM media has). Everything else goes to the same ingest service as the
network receiver and the drop folder, which may still quarantine it.
"""

from __future__ import annotations

import logging
import unicodedata

from edge_agent.errors import MammoError
from edge_agent.ingest.records import QUARANTINED
from kiosk_ui.records import UploadOutcome

log = logging.getLogger(__name__)

MAX_NAME = 255


def safe_label(name: str) -> str | None:
    """The file's name as shown back to the person, or None when it is a path trick.

    A folder upload sends relative names ('DICOM/IM0001'); absolute paths,
    '..', backslashes, drive letters and control characters are refused.
    """
    if not name or len(name) > MAX_NAME:
        return None
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in name):
        return None
    if name.startswith(("/", "~")) or "\\" in name or ":" in name:
        return None
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return name


def looks_like_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def ingest_one(ingest, name: str, data: bytes, max_bytes: int) -> UploadOutcome:
    label = safe_label(name)
    shown = label or name.replace("\\", "/").rsplit("/", 1)[-1][:80] or "?"
    if label is None:
        return UploadOutcome(shown, False, "upload.bad_name")
    if label.rsplit("/", 1)[-1].upper() == "DICOMDIR":
        return UploadOutcome(label, False, "upload.dicomdir")
    if len(data) > max_bytes:
        return UploadOutcome(label, False, "upload.too_large", {"limit": f"{max_bytes // (1024 * 1024)} MB"})
    if not looks_like_dicom(data):
        return UploadOutcome(label, False, "upload.not_dicom")
    try:
        result = ingest.ingest_bytes(data, source="kiosk", label=label)
    except MammoError as exc:  # disk full, database unusable: nothing stored, say so
        # The reason is English for the log and may name a command; the doctor reads what happened and whom to call.
        log.warning("kiosk upload of %s not stored: %s", label, exc)
        key = "upload.box_full" if type(exc).__name__ == "StorageFull" else "upload.box_error"
        return UploadOutcome(label, False, key, {})
    if result.outcome == QUARANTINED:
        return UploadOutcome(label, False, "upload.quarantined", {"reason": result.reason_code, "id": str(result.quarantine_id)})
    key = "upload.duplicate" if result.duplicate else ("upload.fixed" if result.fixes else "upload.stored")
    return UploadOutcome(label, True, key, {"view": f"{result.laterality}-{result.view}".strip("-")}, result.study_uid)
