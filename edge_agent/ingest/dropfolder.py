"""The watched drop folder (USB import, network share).

File-system events (watchdog: inotify on Linux) wake the scanner at once;
when events are unavailable (inotify limits, network shares) it polls.
A file is read only once its size and modification time were the same at
two looks ``settle_s`` apart, so a copy in progress is not read
half-written (the scanner remembers what it saw; a file it has not seen
before waits one settle period, whatever its mtime says, since a copy may
keep the original's). Once a file is safely stored or quarantined it is
deleted from the drop folder: the box keeps its own encrypted copy, and
the plain file carries identity. So do the folders it came in (a USB
export's folders are often named after the patient): a sub-folder with no
file left anywhere below it, for a settle period, is removed; so are the
index files an export leaves beside the images (DICOMDIR, which lists
names, and desktop litter such as .DS_Store or Thumbs.db). The drop folder
itself stays.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.errors import MammoError
from edge_agent.ingest.records import IngestResult

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = (".tmp", ".part", ".crdownload", ".partial")
# Not images, left beside them by exports and desktops; removed once settled so that their folder can go.
DEBRIS_NAMES = frozenset({"dicomdir", ".ds_store", "thumbs.db", "desktop.ini"})

Signature = tuple[int, int]  # (size, mtime in ns) of a file; (0, 0) for a folder with no file below it


@dataclass(frozen=True)
class Seen:
    """What a path looked like, and since when it has looked like that."""

    signature: Signature
    since: float


def is_debris(name: str) -> bool:
    return name.lower() in DEBRIS_NAMES or name.startswith("._")  # ._name: macOS AppleDouble metadata


def is_candidate(name: str) -> bool:
    """A file that may be an image: not hidden (rsync and browsers write hidden temp files), not a partial download."""
    return not (name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES) or is_debris(name))


def observe(previous: Mapping[Path, Seen], current: Mapping[Path, Signature], now: float) -> dict[Path, Seen]:
    """The new memory: unchanged paths keep their ``since``, new or changed ones start now, vanished ones are forgotten."""
    out = {}
    for path, signature in current.items():
        before = previous.get(path)
        out[path] = before if before is not None and before.signature == signature else Seen(signature, now)
    return out


def settled(seen: Mapping[Path, Seen], now: float, settle_s: float) -> set[Path]:
    return {path for path, s in seen.items() if now - s.since >= settle_s}


@dataclass(frozen=True)
class Listing:
    candidates: dict[Path, Signature]
    debris: dict[Path, Signature]
    bare_folders: list[Path]  # sub-folders with no file of any kind below them, deepest first


def list_folder(folder: Path) -> Listing:
    candidates: dict[Path, Signature] = {}
    debris: dict[Path, Signature] = {}
    has_files: set[str] = set()
    bare: list[Path] = []
    for root, dirs, files in os.walk(folder, topdown=False):  # children before parents
        for name in files:
            path = Path(root) / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if not path.is_file() or path.is_symlink():
                continue
            if is_candidate(name):
                candidates[path] = (st.st_size, st.st_mtime_ns)
            elif is_debris(name):
                debris[path] = (st.st_size, st.st_mtime_ns)
        filled = bool(files) or any(os.path.join(root, d) in has_files for d in dirs)
        if filled:
            has_files.add(root)
        elif Path(root) != folder:
            bare.append(Path(root))
    return Listing(candidates, debris, bare)


class DropFolder:
    """One drop folder and what its scanner has seen; ``scan`` ingests settled files and tidies up after them."""

    def __init__(self, service: Any, folder: Path, *, settle_s: float, clock: Any = time.monotonic) -> None:
        self.service = service
        self.folder = Path(folder)
        self.settle_s = settle_s
        self.clock = clock
        self._files: dict[Path, Seen] = {}
        self._folders: dict[Path, Seen] = {}

    def scan(self, now: float | None = None) -> list[IngestResult]:
        if not self.folder.is_dir():
            return []
        now = self.clock() if now is None else now
        listing = list_folder(self.folder)
        self._files = observe(self._files, listing.candidates | listing.debris, now)
        ready = settled(self._files, now, self.settle_s)
        results = []
        batch = sorted((p for p in listing.candidates if p in ready), key=lambda p: (listing.candidates[p][1], str(p)))
        for path, result in self.service.ingest_paths(batch, source="drop"):  # every ingest worker busy on a USB import
            if isinstance(result, MammoError):
                # Not the message: it names the path, and a USB folder is often named after the patient.
                log.error("drop folder: a file could not be ingested (%s); it stays for the next scan", type(result).__name__)
                continue
            if result.kept:
                path.unlink(missing_ok=True)
            results.append(result)
        for path in listing.debris:
            if path in ready:
                path.unlink(missing_ok=True)
        self._remove_bare_folders(now)
        return results

    def _remove_bare_folders(self, now: float) -> None:
        """Sub-folders that have held no file for a settle period (a copy still creating folders gets its time)."""
        bare = list_folder(self.folder).bare_folders
        self._folders = observe(self._folders, dict.fromkeys(bare, (0, 0)), now)
        ready = settled(self._folders, now, self.settle_s)
        for path in bare:  # deepest first, so parents are empty by their turn
            if path in ready:
                try:
                    path.rmdir()
                except OSError:
                    continue  # something arrived in it meanwhile: it stays
                self._folders.pop(path, None)


class DropFolderWatcher:
    def __init__(self, service: Any, folder: Path, *, poll_s: float = 2.0, use_events: bool = True) -> None:
        self.service = service
        self.folder = Path(folder)
        self.poll_s = poll_s
        self.use_events = use_events
        self.mode = "polling"
        self.drop = DropFolder(service, self.folder, settle_s=poll_s)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._observer: Any = None
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
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer

            wake = self._wake

            class _Handler(FileSystemEventHandler):
                def on_any_event(self, event: FileSystemEvent) -> None:
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
                self.drop.scan()
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
