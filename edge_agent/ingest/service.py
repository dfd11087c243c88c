"""The one ingest service every way in feeds: network receiver, drop folder, CLI and the kiosk upload.

Per file: read defensively -> auto-fix -> policy checks -> de-identify (all
in a worker process, see ``pool``; in process when the service has no pool)
-> encrypt and store -> record the instance and its study -> when the study
is complete, queue exactly one ``infer`` job (idempotency key = study UID).
The parent only stores: image store write, then one database transaction.
Anything refused on the way is quarantined with its reason, a file that
hangs or kills its worker too; nothing raises out of ``ingest_bytes`` or
``ingest_path`` except a box-level failure (disk full, database unusable,
ingest shutting down), which the caller reports so the sender retries.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import sqlite_utils

from edge_agent.errors import MammoError, StoreError
from edge_agent.ingest import deid, reader, studies
from edge_agent.ingest.image_store import ImageStore
from edge_agent.ingest.memory import return_large_buffers
from edge_agent.ingest.pool import IngestPool, Work, worker_count
from edge_agent.ingest.prepare import Options, Prepared, Refused, Request, Unreadable, prepare, prepare_in_process
from edge_agent.ingest.quarantine import Quarantine
from edge_agent.ingest.records import ACCEPTED, FIXED, QUARANTINED, Fix, IngestResult, StudyRef
from edge_agent.ingest.work_images import WorkImages
from edge_agent.pacs.worklist import WorklistBook
from edge_agent.queue import JobQueue
from edge_agent.settings import Settings
from edge_agent.store import transaction
from provisioning.envelope import open_sealed, seal
from provisioning.keystore import Keystore

if TYPE_CHECKING:
    from edge_agent.box import Box

log = logging.getLogger(__name__)

INFER_QUEUE = "infer"
# Rejections a person may override on release (after looking at the image); the others are facts about the file.
OVERRIDABLE = frozenset({"burned_in_annotation", "burned_in_text_suspected", "no_pixel_data"})


@dataclass(frozen=True)
class IngestPaths:
    images: Path
    quarantine: Path
    drop: Path

    @classmethod
    def of(cls, settings: Settings) -> IngestPaths:
        return cls(settings.home / "images", settings.home / "quarantine", settings.ingest_drop_folder or settings.home / "drop")


def limits_of(settings: Settings) -> reader.ReadLimits:
    return reader.ReadLimits(settings.ingest_max_file_bytes, settings.ingest_max_pixels, settings.ingest_max_depth, settings.ingest_timeout_s)


def options_of(settings: Settings, keys: deid.DeidKeys, private_safelist: frozenset[tuple[str, int, int]] = frozenset()) -> Options:
    """What a worker needs for every file: limits, policy and the derived secrets (never the master key or the database)."""
    return Options(limits_of(settings), keys, settings.ingest_quarantine_burned_in, private_safelist)


class IngestService:
    """Thread-safe: the receiver's association threads, the drop-folder watcher and the sweeper share one instance.

    ``workers``: None prepares files in this process (tests, one-off tools; no
    hard time limit); a number starts that many worker processes (the
    daemon, ``mammo ingest``), stopped by ``close``. ``pool``: worker
    processes another service owns (the kiosk's upload shares the daemon's);
    used, never closed here. ``work`` replaces the workers' function, for
    tests that need a file to hang or crash a worker. ``work_images``: the
    inference component's handoff (see ``work_images``); each stored
    mammogram's work image is offered there.
    """

    def __init__(
        self,
        *,
        db: sqlite_utils.Database,
        keystore: Keystore,
        queue: JobQueue,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        private_safelist: frozenset[tuple[str, int, int]] = frozenset(),
        workers: int | None = None,
        pool: IngestPool | None = None,
        work: Work = prepare,
        work_images: WorkImages | None = None,
    ) -> None:
        self.db = db
        self.queue = queue
        self.settings = settings
        self.paths = IngestPaths.of(settings)
        self._master = keystore.master_key()
        self.store = ImageStore(self.paths.images, self._master)
        self.quarantine = Quarantine(db, self.paths.quarantine, self._master)
        self.worklist = WorklistBook(db, self._master, zone=settings.timezone, clock=clock)  # answers C-FIND; linked below
        self.keys = deid.DeidKeys.from_keystore(keystore, settings.ingest_date_shift_max_days)
        self.limits = limits_of(settings)
        self.options = options_of(settings, self.keys, private_safelist)
        self.clock = clock
        self.private_safelist = private_safelist
        self._lock = threading.RLock()
        self.work_images = work_images  # where inference takes the decoded views (decode once); None: it decodes them
        self._owns_pool = pool is None and bool(workers)
        if pool is None and workers:
            pool = IngestPool(self.options, workers=workers, timeout_s=settings.ingest_timeout_s, work=work).start()
        self.pool = pool

    @classmethod
    def from_box(cls, box: Box, *, workers: int | None = None, work_images: WorkImages | None = None) -> IngestService:
        return cls(db=box.db, keystore=box.keystore, queue=box.queue, settings=box.settings, workers=workers, work_images=work_images)

    def close(self) -> None:
        """Stop the worker processes (files in progress finish first); the database stays open, it is the caller's."""
        if self.pool is not None and self._owns_pool:
            self.pool.close()

    @property
    def parallelism(self) -> int:
        return self.pool.size if self.pool is not None else 1

    # -- the pipeline -------------------------------------------------------------------------
    def _work_size(self) -> int | None:
        return self.work_images.size if self.work_images is not None else None

    def _prepare(self, request: Request) -> Prepared | Refused | Unreadable:
        if self.pool is not None:
            return self.pool.run(request)
        return prepare_in_process(request, self.options)

    def ingest_path(self, path: Path, *, source: str = "cli", label: str | None = None) -> IngestResult:
        """Ingest a file on disk; the worker reads it, so a large file is not held in this process while it is prepared."""
        path = Path(path)
        label = str(path) if label is None else label
        try:
            size = path.stat().st_size
            if size > self.limits.max_file_bytes:
                with path.open("rb") as fh:
                    head = fh.read(1 << 20)  # keep the head for a person to look at; the rest is refused unread
                return self._hold(head, "file_too_large", f"File is {size} bytes, above ingest_max_file_bytes={self.limits.max_file_bytes}; only its first MiB was kept.", source, label, ())
        except OSError as exc:
            raise StoreError(f"Cannot read {path}: {exc.strerror}. Check that the file exists and is readable.") from None
        outcome = self._prepare(Request(path=str(path), work_size=self._work_size()))
        if isinstance(outcome, Prepared):
            return self._store(outcome, source, label)
        if isinstance(outcome, Unreadable):
            raise StoreError(f"Cannot read {path}: {outcome.message}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"Cannot read {path} to quarantine it: {exc.strerror}. Check that the file exists and is readable.") from None
        return self._hold(data, outcome.reason_code, outcome.reason, source, label, outcome.fixes)

    def ingest_bytes(self, data: bytes, *, source: str, label: str = "", allow: frozenset[str] = frozenset()) -> IngestResult:
        outcome = self._prepare(Request(data=data, allow=allow, work_size=self._work_size()))
        if isinstance(outcome, Prepared):
            return self._store(outcome, source, label)
        if isinstance(outcome, Unreadable):  # cannot happen for bytes; kept total for the type checker
            raise StoreError(outcome.message)
        return self._hold(data, outcome.reason_code, outcome.reason, source, label, outcome.fixes)

    def ingest_paths(self, paths: Iterable[Path], *, source: str = "cli") -> Iterator[tuple[Path, IngestResult | MammoError]]:
        """Many files, every worker busy; results in input order, a box-level failure given per file instead of raised."""
        def one(path: Path) -> tuple[Path, IngestResult | MammoError]:
            try:
                return path, self.ingest_path(path, source=source)
            except MammoError as exc:
                return path, exc

        # Twice the workers: while one thread stores a result, its worker already prepares the next file.
        with ThreadPoolExecutor(max_workers=2 * self.parallelism, thread_name_prefix="ingest") as ex:
            yield from ex.map(one, paths)

    def _hold(self, data: bytes, code: str, reason: str, source: str, label: str, fixes: tuple[Fix, ...]) -> IngestResult:
        digest = self.quarantine.keep(data, source=source, label=label)  # sealed and fsynced outside the lock, as images are
        with self._lock:
            qid = self.quarantine.record(digest, size=len(data), reason_code=code, reason=reason, source=source, fixes=fixes, now=self.clock())
        log.info("ingest from %s: quarantined (%s) as #%d", source, code, qid)
        return IngestResult(label=label, outcome=QUARANTINED, fixes=fixes, reason_code=code, reason=reason, quarantine_id=qid)

    def _store(self, p: Prepared, source: str, label: str) -> IngestResult:
        f = p.facts
        outcome = FIXED if p.fixes else ACCEPTED
        now = self.clock()
        notes: list[str] = []
        # Content-addressed, atomic writes: two threads may store at once (their fsyncs overlap); only the database is serialised.
        digest, _ = self.store.put(p.data)
        if p.work is not None and p.work_size is not None and self.work_images is not None:
            self.work_images.offer(digest, p.work_size, p.work)  # before its row exists: whoever sees the row finds it
        with self._lock:
            with transaction(self.db) as db:
                duplicate = db.execute("SELECT digest FROM ingest_instances WHERE sop_uid = ?", [f.sop_uid]).fetchone()
                self._remember_identity(db, p.identity, now)
                studies.record_instance(db, study_uid=f.study_uid, pseudonym=p.identity.pseudonym, modality=f.modality, now=now)
                self.worklist.link_arrival(db, p.identity.patient_id, p.identity.accession, f.study_uid, now)  # a scheduled screening arrived
                if duplicate is None:
                    db.execute(
                        "INSERT INTO ingest_instances (sop_uid, study_uid, series_uid, digest, size, modality, sop_class, laterality, view, outcome, fixes, source, received_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [f.sop_uid, f.study_uid, f.series_uid, digest, len(p.data), f.modality, f.sop_class,
                         f.laterality, f.view, outcome, studies.fixes_json(p.fixes), source, now],
                    )
                elif duplicate[0] != digest:
                    notes.append("An instance with this SOP Instance UID was already stored with different content; the first one is kept.")
                closed = studies.mark_if_complete(db, f.study_uid, now, self.settings.ingest_study_complete_timeout_s)
            job_id = self._queue_complete(f.study_uid) if closed else None
        if f.modality != "MG":
            notes.append(f"Modality {f.modality}: stored, but only mammograms are triaged.")
        log.debug("ingest from %s: %s %s%s", source, outcome, digest[:12], " (duplicate)" if duplicate else "")
        return IngestResult(
            label=label, outcome=outcome, fixes=p.fixes, digest=digest, study_uid=f.study_uid, sop_instance_uid=f.sop_uid,
            modality=f.modality, laterality=f.laterality, view=f.view, duplicate=duplicate is not None, infer_job_id=job_id, notes=tuple(notes),
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
        identity: dict[str, str] = json.loads(open_sealed(self._master, row[0], b"mammo-reid:" + pseudonym.encode()).decode("utf-8"))
        return identity

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


def start_services(box: Box, stop: threading.Event) -> list[threading.Thread]:
    """Daemon hook: the DICOM receiver, the drop-folder watcher and the study sweeper, until ``stop`` is set."""
    from edge_agent.ingest.dropfolder import DropFolderWatcher
    from edge_agent.ingest.scp import DicomReceiver

    return_large_buffers()  # the daemon's image buffers (received, sealed, decoded) leave with their image (see memory)
    workers = worker_count(box.settings.ingest_workers)
    box.work_images = WorkImages()  # the inference component, started next, takes decoded views from here
    service = IngestService.from_box(box, workers=workers, work_images=box.work_images)
    box.ingest_pool = service.pool  # the kiosk's USB upload uses the same workers and time limit
    log.info("ingest: %d worker process(es), %g s per file", workers, box.settings.ingest_timeout_s)
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
        service.close()

    thread = threading.Thread(target=sweeper, name="ingest-sweeper", daemon=True)
    thread.start()
    return [thread]
