"""Views made ready for the model while their study is still arriving.

A screening study arrives one view at a time, and the ``infer`` job starts
only when the fourth is stored. Reading, decrypting, decoding and reducing a
real-size view is most of what a study costs here (see ``mammo bench
study``), so the inference component does it for each view as soon as it is
stored (:meth:`ViewCache.prepare_new`, polled by a thread beside the
workers); when the job comes, three views wait ready and only the last is
prepared in its time. Nothing is written anywhere: a crash loses only the
head start, and the job prepares whatever is not ready.

What is kept per view is the 128 x 128 model input (about 80 kB), a bounded
number of them; the full-size pixels exist only while a view is being
prepared, and at most ``parallel`` views are prepared at once in the
process, whoever asks (the poller or a worker).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from models.preprocess import Preprocessed

log = logging.getLogger(__name__)

#: Prepared views kept: four studies of four views in flight, with room to spare.
CAPACITY = 64

Prepare = Callable[[str, int], "Preprocessed | Exception"]  # (digest, input size) -> model input or the error


class ViewCache:
    """Prepared views by (image digest, input size), shared by the inference workers of a process."""

    def __init__(self, parallel: int = 1, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._ready: OrderedDict[tuple[str, int], Preprocessed] = OrderedDict()
        self._inflight: dict[tuple[str, int], Future[Preprocessed | Exception]] = {}
        self._lock = threading.Lock()
        self._full_size = threading.BoundedSemaphore(max(1, parallel))  # full-size images in memory at once
        self._seen_rowid: int | None = None
        self.hits = 0  # views a job found ready

    def get(self, digest: str, size: int, prepare: Prepare) -> tuple[Preprocessed | Exception, bool]:
        """The view's model input (prepared now, or waited for if it is being prepared), and whether it was ready."""
        key = (digest, size)
        with self._lock:
            hit = self._ready.get(key)
            if hit is not None:
                self._ready.move_to_end(key)
                self.hits += 1
                return hit, True
            fut = self._inflight.get(key)
            owner = fut is None
            if fut is None:
                fut = self._inflight[key] = Future()
        if not owner:
            return fut.result(), True  # the poller is on it: wait rather than decode it twice
        try:
            with self._full_size:
                result = prepare(digest, size)
        except BaseException as exc:  # never leave a waiter hanging
            fut.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)
        if isinstance(result, Preprocessed):
            with self._lock:
                self._ready[key] = result
                while len(self._ready) > self.capacity:
                    self._ready.popitem(last=False)
        fut.set_result(result)
        return result, False

    def prepare_new(self, db: Any, size: int, prepare: Prepare) -> int:
        """Prepare the MG views stored since the last call (the first call only notes where the table ends)."""
        if self._seen_rowid is None:
            self._seen_rowid = int(db.execute("SELECT coalesce(max(rowid), 0) FROM ingest_instances").fetchone()[0])
            return 0
        rows = db.execute("SELECT rowid, digest, modality FROM ingest_instances WHERE rowid > ? ORDER BY rowid", [self._seen_rowid]).fetchall()
        n = 0
        for rowid, digest, modality in rows:
            self._seen_rowid = max(self._seen_rowid, int(rowid))
            if modality != "MG":
                continue
            result, _ = self.get(digest, size, prepare)
            n += 1
            if isinstance(result, Exception):  # the job will record it against the study
                log.debug("view %s… could not be prepared ahead: %s", digest[:12], result)
        return n
