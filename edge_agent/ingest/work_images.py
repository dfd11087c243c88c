"""Work images handed from ingest to inference, so a view is decoded once.

Ingest decodes every image in a worker process for its checks; an
inference worker used to read the stored view back, decrypt it and decode
it a second time (138 ms for a 3328 x 4096 RLE image). Instead the ingest
worker reduces the pixels it already holds to the model's work image (about
0.4 megapixels, see :func:`edge_agent.inference.decode.work_from_pixels`),
and the parent offers it here under the stored object's digest before the
instance's row is committed; the inference component takes it when it
prepares that view.

Only a head start, never a source of truth: nothing is written, an offer not
taken is dropped after ``capacity`` newer ones, and a view with no offer
(the daemon restarted, another model's input size, a file ingest could not
reduce) is read from the store and decoded as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.preprocess import WorkImage

#: Offers kept: four 4-view studies arriving at once. About 1.5 MB each.
CAPACITY = 16


class WorkImages:
    """Thread-safe offers keyed by (image digest, model input size); ``size`` says which input size inference wants."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.size: int | None = None  # set by the inference component once its model is loaded; None: make none
        self._offers: OrderedDict[tuple[str, int], WorkImage] = OrderedDict()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.offered = 0
        self.taken = 0

    def offer(self, digest: str, size: int, work: WorkImage) -> None:
        with self._lock:
            self._offers[(digest, size)] = work
            self.offered += 1
            while len(self._offers) > self.capacity:
                self._offers.popitem(last=False)
            self._arrived.notify_all()

    def wait(self, timeout_s: float) -> list[tuple[str, int]]:
        """The offers not yet taken, once there is one (or ``timeout_s`` passed): inference prepares them at once."""
        with self._arrived:
            if not self._offers:
                self._arrived.wait(timeout_s)
            return list(self._offers)

    def take(self, digest: str, size: int) -> WorkImage | None:
        """The offered work image of this view at this input size, once (None when there is none)."""
        with self._lock:
            work = self._offers.pop((digest, size), None)
            if work is not None:
                self.taken += 1
            return work

    def __len__(self) -> int:
        with self._lock:
            return len(self._offers)
