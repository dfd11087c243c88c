"""C-STOREs acknowledged as soon as they are durable on the box, ingested behind the acknowledgement.

A C-STORE response of Success promises the modality that the image is safe
on the box, so it may delete its copy. The receiver used to answer only
after the whole ingest (parse, decode, de-identify, encrypt, store), one
image after another on an association: about 90% of a real-size study's
time. The promise needs less: the received file, fsync'd, under a name that
survives a restart. So::

    C-STORE arrives in spool/cstore-*.dcm (pynetdicom writes it)
      fsync the file, rename it into spool/accepted/, fsync the folder  -> answer Success
      an ingest thread prepares it in a worker process, stores it        -> delete it

A daemon killed after the answer finds the file in ``spool/accepted`` when
it starts again and ingests it before it listens (``recover``): nothing
acknowledged is lost, and storing is idempotent (content-addressed objects,
one row per SOP instance), so a file ingested just before the kill and
again after it is stored once. The folder name, not a database row, is the
durable record: a row would cost one more fsync per image and say nothing
the folder does not.

Bounded: at most ``backlog`` files wait acknowledged and not yet ingested;
past that an association waits for room before it answers (the modality
slows down to what ingest sustains). A box-level failure (disk full,
workers unavailable) leaves the file where it is, retried with backoff; a
file's own faults end in quarantine, as before.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from edge_agent.errors import IngestUnavailable, MammoError, StorageFull
from provisioning.files import fsync_dir

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{20})-([A-Za-z0-9_.-]{1,16})-[0-9a-f]{32}\.dcm$")
_RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)


def accepted_name(calling: str, now_ns: int | None = None) -> str:
    """Arrival order first (recovery keeps it), then the sender (``calling`` already safe for a file name)."""
    return f"{time.time_ns() if now_ns is None else now_ns:020d}-{calling}-{uuid.uuid4().hex}.dcm"


def sender_of(path: Path) -> str:
    m = _NAME.match(path.name)
    return m.group(2) if m else "unknown"


class AcceptedSpool:
    """The acknowledged, not yet ingested C-STOREs: ``accept`` makes one durable, threads ingest them."""

    def __init__(self, service: Any, folder: Path, *, backlog: int, threads: int) -> None:
        if backlog < 1 or threads < 1:
            raise ValueError("an accepted spool needs room for one file and one thread")
        self.service = service
        self.folder = Path(folder)
        self.backlog = backlog
        self._room = threading.BoundedSemaphore(backlog)
        self._todo: queue.Queue[Path | None] = queue.Queue()
        self._pending: set[Path] = set()
        self._slotted: set[Path] = set()  # files holding a place in the backlog (not those found at start)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"ingest-accepted-{i}", daemon=True) for i in range(threads)]
        self.ingested = 0
        self.retried = 0

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> AcceptedSpool:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        for t in self._threads:
            t.start()
        return self

    def recover(self, wait_s: float) -> int:
        """Queue what an earlier run acknowledged and did not ingest, and wait (up to ``wait_s``) until it is stored."""
        left = sorted(p for p in self.folder.iterdir() if p.is_file() and p.suffix == ".dcm")
        for path in left:
            self._submit(path, slot=False)  # outside the backlog: it is already acknowledged, and however many there are
        if left:
            log.warning("ingesting %d DICOM image(s) acknowledged before the last stop and not yet stored", len(left))
            if not self.wait_idle(wait_s):
                log.warning("still ingesting acknowledged images from before the last stop; the receiver starts meanwhile")
        return len(left)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking files once those under way are done; what is left stays in the folder for the next start."""
        self._stop.set()
        for _ in self._threads:
            self._todo.put(None)
        end = time.monotonic() + grace_s
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))

    # -- the receiver's side ---------------------------------------------------------------------
    def accept(self, spooled: Path, calling: str, wait_s: float) -> Path | None:
        """Make a received file durable under ``accepted/`` and queue it; None when no room came within ``wait_s``.

        Raises StorageFull or OSError when the disk refuses (the modality is told to retry).
        """
        if not self._room.acquire(timeout=wait_s):
            return None
        try:
            fd = os.open(spooled, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            target = self.folder / accepted_name(calling)
            os.rename(spooled, target)
            fsync_dir(self.folder)
        except OSError as exc:
            self._room.release()
            if exc.errno == 28:  # ENOSPC
                raise StorageFull("Disk full while keeping a received image; the modality was told to retry. Fix: free disk space.") from exc
            raise
        self._submit(target)
        return target

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until every accepted file is ingested (tests, shutdown, recovery); False on timeout."""
        end = time.monotonic() + timeout_s
        with self._idle:
            while self._pending:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    # -- ingest threads --------------------------------------------------------------------------
    def _submit(self, path: Path, *, slot: bool = True) -> None:
        with self._lock:
            self._pending.add(path)
            if slot:
                self._slotted.add(path)
        self._todo.put(path)

    def _done(self, path: Path) -> None:
        with self._idle:
            self._pending.discard(path)
            slotted = path in self._slotted
            self._slotted.discard(path)
            self._idle.notify_all()
        if slotted:
            self._room.release()

    def _run(self) -> None:
        while True:
            path = self._todo.get()
            if path is None or self._stop.is_set():
                return
            calling = sender_of(path)
            attempt = 0
            while not self._stop.is_set():
                if not path.exists():  # removed by hand: nothing left to ingest, nothing to retry
                    log.error("acknowledged C-STORE %s vanished from %s before it was ingested", path.name, self.folder)
                    self._done(path)
                    break
                try:
                    self.service.ingest_path(path, source=f"scp:{calling}", label=f"C-STORE from {calling}")
                except IngestUnavailable as exc:
                    if self._stop.is_set():
                        return  # shutting down: the file waits for the next start
                    self._retry_later(path, exc, attempt)
                except MammoError as exc:  # disk full, database unusable: keep the file, try again
                    self._retry_later(path, exc, attempt)
                except Exception:  # a bug: keep the file, do not spin
                    log.exception("ingest of an acknowledged C-STORE failed unexpectedly; kept in %s, retried", self.folder)
                    self._retry_later(path, None, attempt)
                else:
                    path.unlink(missing_ok=True)
                    self.ingested += 1
                    self._done(path)
                    break
                attempt += 1
            else:
                return

    def _retry_later(self, path: Path, exc: Exception | None, attempt: int) -> None:
        delay = _RETRY_S[min(attempt, len(_RETRY_S) - 1)]
        self.retried += 1
        if exc is not None:
            log.error("acknowledged C-STORE %s not ingested yet (%s); kept, retrying in %g s", path.name, exc, delay)
        self._stop.wait(delay)
