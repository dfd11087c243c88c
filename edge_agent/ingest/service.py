"""The one ingest service every way in feeds: network receiver, drop folder, CLI, and later the kiosk upload.

Per file: read defensively -> auto-fix -> policy checks -> de-identify ->
encrypt and store -> record the instance and its study -> when the study is
complete, queue exactly one ``infer`` job (idempotency key = study UID).
Anything refused on the way is quarantined with its reason; nothing raises
out of ``ingest_bytes`` except a box-level failure (disk full, database
unusable), which the caller reports so the sender retries.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import sqlite_utils
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from edge_agent.errors import DicomRejected, StoreError
from edge_agent.ingest import autofix, burned_in, deid, reader, studies
from edge_agent.ingest.image_store import ImageStore, sha256
from edge_agent.ingest.quarantine import Quarantine
from edge_agent.ingest.records import ACCEPTED, FIXED, QUARANTINED, Fix, IngestResult, StudyRef
from edge_agent.queue import JobQueue
from edge_agent.settings import Settings
from edge_agent.store import transaction
from provisioning.envelope import open_sealed, seal

log = logging.getLogger(__name__)

INFER_QUEUE = "infer"
# Rejections a person may override on release (after looking at the image); the others are facts about the file.
OVERRIDABLE = frozenset({"burned_in_annotation", "burned_in_text_suspected", "no_pixel_data"})
IMPLEMENTATION_VERSION = "MAMMO_EDGE_1"
_PROCESS_LOCK = threading.Lock()


@dataclass(frozen=True)
class IngestPaths:
    images: Path
    quarantine: Path
    drop: Path

    @classmethod
    def of(cls, settings: Settings) -> "IngestPaths":
        return cls(settings.home / "images", settings.home / "quarantine", settings.ingest_drop_folder or settings.home / "drop")


def limits_of(settings: Settings) -> reader.ReadLimits:
    return reader.ReadLimits(settings.ingest_max_file_bytes, settings.ingest_max_pixels, settings.ingest_max_depth, settings.ingest_timeout_s)


def serialize(ds: Dataset) -> bytes:
    """The de-identified object as a DICOM file, with file meta rebuilt from the (remapped) dataset."""
    ts = UID(str(ds.file_meta.TransferSyntaxUID)) if "TransferSyntaxUID" in ds.file_meta else ExplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    for tag in [t for t in ds.keys() if t.group == 0x0000 or t.element == 0x0000]:
        del ds[tag]  # command and group-length elements do not belong in a stored object
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass(frozen=True)
class Processed:
    """A file ready to store: the de-identified dataset, its encoded bytes, the de-identification report, the fixes."""

    ds: Dataset
    data: bytes
    report: deid.DeidReport
    fixes: tuple[Fix, ...]


def process(
    data: bytes,
    *,
    limits: reader.ReadLimits,
    keys: deid.DeidKeys,
    quarantine_burned_in: bool = True,
    allow: frozenset[str] = frozenset(),
    private_safelist: frozenset[tuple[str, int, int]] = frozenset(),
) -> Processed:
    """Read, fix, check and de-identify one file (no storage): raises DicomRejected, carrying ``fixes``, when refused.

    Also what ``mammo deid`` runs for research exports.
    """
    fixes: list[Fix] = []
    deadline = reader.Deadline(limits.timeout_s)
    try:
        # catch_warnings swaps process-wide state (Python 3.11), so files are processed one at a time.
        with _PROCESS_LOCK, warnings.catch_warnings(), reader.time_limit(limits.timeout_s):
            warnings.simplefilter("ignore")
            decoded = reader.read(data, limits, deadline)
            ds, fixes = decoded.ds, list(decoded.fixes)
            if decoded.pixels is None and "no_pixel_data" not in allow:
                sop = UID(str(ds.get("SOPClassUID", "") or "")).name or "unknown SOP class"
                raise DicomRejected("no_pixel_data", f"Not an image ({sop}); the box triages images only. Release it if it must be kept.")
            _, more = autofix.apply_all(ds, decoded.pixels, sha256(data))
            fixes = autofix.summarise(fixes + more)
            if str(ds.get("BurnedInAnnotation", "")).upper() == "YES" and quarantine_burned_in and "burned_in_annotation" not in allow:
                raise DicomRejected("burned_in_annotation", "BurnedInAnnotation=YES: text may be burned into the pixels. Review the image; release it if the text identifies no one.")
            burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
            if (decoded.pixels is not None and burned != "NO" and quarantine_burned_in
                    and "burned_in_text_suspected" not in allow and burned_in.suspect_text(decoded.pixels)):
                raise DicomRejected("burned_in_text_suspected", "The image seems to carry a line of text in its pixels and does not declare BurnedInAnnotation=NO. Review it; release it if the text identifies no one.")
            deadline.check("auto-fix")
            report = deid.deidentify(ds, keys, private_safelist=private_safelist)
            deadline.check("de-identification")
            try:
                out = serialize(ds)
            except Exception as exc:
                raise DicomRejected("unwritable", f"The repaired object cannot be written as DICOM ({type(exc).__name__}); re-export it from the modality.") from None
    except DicomRejected as exc:
        exc.fixes = tuple(fixes)
        raise
    except (StoreError, MemoryError):
        raise
    except Exception as exc:  # a bug or an unforeseen file: never crash the receiver, keep the file
        # Frames only: an exception's message may quote a header value, and a value may be a name.
        log.error("unexpected %s while processing a DICOM object; the file is quarantined:\n%s",
                  type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)))
        rejected = DicomRejected("internal_error", f"Unexpected {type(exc).__name__} while processing; the file is kept. Report it with `mammo quarantine show`.")
        rejected.fixes = tuple(fixes)
        raise rejected from None
    return Processed(ds, out, report, tuple(fixes))


class IngestService:
    """Thread-safe: the receiver's association threads, the drop-folder watcher and the sweeper share one instance."""

    def __init__(
        self,
        *,
        db: sqlite_utils.Database,
        keystore,
        queue: JobQueue,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        private_safelist: frozenset[tuple[str, int, int]] = frozenset(),
    ) -> None:
        self.db = db
        self.queue = queue
        self.settings = settings
        self.paths = IngestPaths.of(settings)
        self._master = keystore.master_key()
        self.store = ImageStore(self.paths.images, self._master)
        self.quarantine = Quarantine(db, self.paths.quarantine, self._master)
        self.keys = deid.DeidKeys.from_keystore(keystore, settings.ingest_date_shift_max_days)
        self.limits = limits_of(settings)
        self.clock = clock
        self.private_safelist = private_safelist
        self._lock = threading.RLock()

    @classmethod
    def from_box(cls, box) -> "IngestService":
        return cls(db=box.db, keystore=box.keystore, queue=box.queue, settings=box.settings)

    # -- the pipeline -------------------------------------------------------------------------
    def ingest_path(self, path: Path, *, source: str = "cli") -> IngestResult:
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > self.limits.max_file_bytes:
                with path.open("rb") as fh:
                    data = fh.read(1 << 20)  # keep the head for a person to look at; the rest is refused unread
                return self._hold(data, "file_too_large", f"File is {size} bytes, above ingest_max_file_bytes={self.limits.max_file_bytes}; only its first MiB was kept.", source, str(path), ())
            data = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"Cannot read {path}: {exc.strerror}. Check that the file exists and is readable.") from None
        return self.ingest_bytes(data, source=source, label=str(path))

    def ingest_bytes(self, data: bytes, *, source: str, label: str = "", allow: frozenset[str] = frozenset()) -> IngestResult:
        try:
            p = process(data, limits=self.limits, keys=self.keys, quarantine_burned_in=self.settings.ingest_quarantine_burned_in,
                        allow=allow, private_safelist=self.private_safelist)
        except DicomRejected as exc:
            return self._hold(data, exc.reason_code, str(exc), source, label, getattr(exc, "fixes", ()))
        return self._store(p.ds, p.data, p.report, p.fixes, source, label)

    def _hold(self, data: bytes, code: str, reason: str, source: str, label: str, fixes: tuple[Fix, ...]) -> IngestResult:
        with self._lock:
            qid = self.quarantine.hold(data, reason_code=code, reason=reason, source=source, label=label, fixes=fixes, now=self.clock())
        log.info("ingest from %s: quarantined (%s) as #%d", source, code, qid)
        return IngestResult(label=label, outcome=QUARANTINED, fixes=fixes, reason_code=code, reason=reason, quarantine_id=qid)

    def _store(self, ds: Dataset, out: bytes, report: deid.DeidReport, fixes: tuple[Fix, ...], source: str, label: str) -> IngestResult:
        study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
        modality = str(ds.get("Modality", "") or "OT").upper()
        laterality = str(ds.get("ImageLaterality", "") or "").upper() if modality == "MG" else ""
        view = str(ds.get("ViewPosition", "") or "").upper() if modality == "MG" else ""
        outcome = FIXED if fixes else ACCEPTED
        now = self.clock()
        notes: list[str] = []
        with self._lock:
            digest, _ = self.store.put(out)
            with transaction(self.db) as db:
                duplicate = db.execute("SELECT digest FROM ingest_instances WHERE sop_uid = ?", [sop_uid]).fetchone()
                self._remember_identity(db, report.identity, now)
                studies.record_instance(db, study_uid=study_uid, pseudonym=report.identity.pseudonym, modality=modality, now=now)
                if duplicate is None:
                    db.execute(
                        "INSERT INTO ingest_instances (sop_uid, study_uid, series_uid, digest, size, modality, sop_class, laterality, view, outcome, fixes, source, received_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [sop_uid, study_uid, str(ds.SeriesInstanceUID), digest, len(out), modality, str(ds.SOPClassUID),
                         laterality, view, outcome, studies.fixes_json(fixes), source, now],
                    )
                elif duplicate[0] != digest:
                    notes.append("An instance with this SOP Instance UID was already stored with different content; the first one is kept.")
                closed = studies.mark_if_complete(db, study_uid, now, self.settings.ingest_study_complete_timeout_s)
            job_id = self._queue_complete(study_uid) if closed else None
        if modality != "MG":
            notes.append(f"Modality {modality}: stored, but only mammograms are triaged.")
        log.debug("ingest from %s: %s %s%s", source, outcome, digest[:12], " (duplicate)" if duplicate else "")
        return IngestResult(
            label=label, outcome=outcome, fixes=fixes, digest=digest, study_uid=study_uid, sop_instance_uid=sop_uid,
            modality=modality, laterality=laterality, view=view, duplicate=duplicate is not None, infer_job_id=job_id, notes=tuple(notes),
        )

    def _remember_identity(self, db: sqlite_utils.Database, identity: deid.Identity, now: float) -> None:
        exists = db.execute("SELECT 1 FROM ingest_reid WHERE pseudonym = ?", [identity.pseudonym]).fetchone()
        if exists:
            return
        plain = json.dumps({"name": identity.patient_name, "patient_id": identity.patient_id, "birth_date": identity.birth_date,
                            "issuer": identity.issuer}, ensure_ascii=False).encode("utf-8")
        db.execute("INSERT INTO ingest_reid (pseudonym, sealed, created_at) VALUES (?, ?, ?)",
                   [identity.pseudonym, seal(self._master, plain, b"mammo-reid:" + identity.pseudonym.encode()), now])

    def _queue_complete(self, study_uid: str) -> int:
        ref = studies.study_ref(self.db, study_uid)
        result = self.queue.enqueue(INFER_QUEUE, ref.to_payload(), key=f"study:{study_uid}")
        with transaction(self.db) as db:
            studies.set_job(db, study_uid, result.job_id)
        log.info("study %s… complete (%s): infer job %d", study_uid[:16], ref.complete_reason, result.job_id)
        return result.job_id

    # -- periodic work -------------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> list[StudyRef]:
        """Close studies that stayed quiet past the timeout and queue any complete study not yet queued."""
        now = self.clock() if now is None else now
        closed: list[StudyRef] = []
        with self._lock:
            with transaction(self.db) as db:
                for uid in studies.stale_open_studies(db, now, self.settings.ingest_study_complete_timeout_s):
                    studies.mark_if_complete(db, uid, now, self.settings.ingest_study_complete_timeout_s)
            for uid in studies.unqueued_complete(self.db):
                self._queue_complete(uid)
                closed.append(studies.study_ref(self.db, uid))
        return closed

    # -- for the kiosk and the CLI ---------------------------------------------------------------
    def identity_of(self, pseudonym: str) -> dict[str, str] | None:
        """The real name and ID behind a pseudonym (decrypted on the box, for the doctor's screen only)."""
        row = self.db.execute("SELECT sealed FROM ingest_reid WHERE pseudonym = ?", [pseudonym]).fetchone()
        if row is None:
            return None
        return json.loads(open_sealed(self._master, row[0], b"mammo-reid:" + pseudonym.encode()).decode("utf-8"))

    def release(self, qid: int) -> IngestResult:
        """Run a quarantined file through ingest again, overriding its reason when a person may override it."""
        entry = self.quarantine.entry(qid)
        data, label = self.quarantine.open(qid)
        allow = frozenset({entry.reason_code}) & OVERRIDABLE
        result = self.ingest_bytes(data, source="release", label=label, allow=allow)
        if result.outcome != QUARANTINED:
            with self._lock:
                self.quarantine.mark(qid, "released", now=self.clock())
        return replace(result, quarantine_id=qid)

    def purge(self, qid: int) -> None:
        with self._lock:
            self.quarantine.mark(qid, "purged", now=self.clock())


def start_services(box, stop: threading.Event) -> list[threading.Thread]:
    """Daemon hook: the DICOM receiver, the drop-folder watcher and the study sweeper, until ``stop`` is set."""
    from edge_agent.ingest.dropfolder import DropFolderWatcher
    from edge_agent.ingest.scp import DicomReceiver

    service = IngestService.from_box(box)
    receiver = DicomReceiver(service, box.settings)
    try:
        receiver.start()
    except OSError as exc:  # the drop folder and the CLI still work without the network receiver
        log.error("DICOM receiver could not listen on %s:%s (%s). Fix: free the port or set dicom_port.", receiver.host, receiver.port, exc)
    watcher = DropFolderWatcher(service, service.paths.drop, poll_s=box.settings.ingest_drop_poll_s)
    watcher.start()

    def sweeper() -> None:
        period = min(30.0, box.settings.ingest_study_complete_timeout_s / 4)
        while not stop.wait(period):
            try:
                service.sweep()
            except Exception:
                log.exception("study sweep failed; retrying next period")
        receiver.stop()
        watcher.stop()

    thread = threading.Thread(target=sweeper, name="ingest-sweeper", daemon=True)
    thread.start()
    return [thread]
