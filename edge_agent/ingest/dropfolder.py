"""The watched drop folder (USB import, network share).

File-system events (watchdog: inotify on Linux) wake the scanner at once;
when events are unavailable (inotify limits, network shares) it polls. A
file is read only once its size and modification time stopped changing for
one poll interval, so a copy in progress is not read half-written. Once a
file is safely stored or quarantined it is deleted from the drop folder:
the box keeps its own encrypted copy, and the plain file carries identity.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from edge_agent.errors import MammoError
from edge_agent.ingest.records import IngestResult

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = (".tmp", ".part", ".crdownload", ".partial")


def candidates(folder: Path, now: float, settle_s: float) -> list[Path]:
    """Files old enough to be complete, oldest first; hidden and temporary files are left alone."""
    out = []
    for path in folder.rglob("*"):
        if not path.is_file() or path.name.startswith(".") or path.name.lower().endswith(IGNORED_SUFFIXES):
            continue
        if path.name.upper() == "DICOMDIR":
            continue
        try:
            if now - path.stat().st_mtime >= settle_s:
                out.append(path)
        except FileNotFoundError:
            continue
    return sorted(out, key=lambda p: (p.stat().st_mtime, str(p)))


def scan_once(service, folder: Path, *, settle_s: float, now: float | None = None) -> list[IngestResult]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    results = []
    for path in candidates(folder, time.time() if now is None else now, settle_s):
        try:
            result = service.ingest_path(path, source="drop")
        except MammoError as exc:
            # Not the message: it names the path, and a USB folder is often named after the patient.
            log.error("drop folder: a file could not be ingested (%s); it stays for the next scan", type(exc).__name__)
            continue
        if result.kept:
            path.unlink(missing_ok=True)
        results.append(result)
    return results


class DropFolderWatcher:
    def __init__(self, service, folder: Path, *, poll_s: float = 2.0, use_events: bool = True) -> None:
        self.service = service
        self.folder = Path(folder)
        self.poll_s = poll_s
        self.use_events = use_events
        self.mode = "polling"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._observer = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.use_events:
            self._start_observer()
        self._thread = threading.Thread(target=self._run, name="ingest-dropfolder", daemon=True)
        self._thread.start()
        log.info("watching drop folder %s (%s)", self.folder, self.mode)

    def _start_observer(self) -> None:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer

            wake = self._wake

            class _Handler(FileSystemEventHandler):
                def on_any_event(self, event) -> None:  # noqa: D401
                    wake.set()

            observer = Observer()
            observer.schedule(_Handler(), str(self.folder), recursive=True)
            observer.daemon = True
            observer.start()
            self._observer = observer
            self.mode = "events"
        except Exception as exc:  # inotify limits, unsupported file systems
            log.warning("drop folder events unavailable (%s); polling every %.1f s instead", exc, self.poll_s)
            self.mode = "polling"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                scan_once(self.service, self.folder, settle_s=self.poll_s)
            except Exception as exc:
                log.error("drop folder scan failed (%s); retrying", type(exc).__name__)
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=10)
