"""Give freed image buffers back to the system at once (glibc's malloc keeps them otherwise).

A real-size image passes through the daemon and its ingest workers as a
few 27 MB buffers (the file, the de-identified file, its sealed copy, the
decoded pixels). glibc serves such a request with its own mmap, returned on
free, but only until the first one is freed: then it raises its mmap
threshold to that size (up to 32 MB), so every later image buffer comes
from a heap arena, which returns memory only from its top and keeps the
rest. Resident memory then grows towards the largest mix of buffers ever
live in any arena of any thread, not what is live now. Fixing the threshold
(``mallopt(M_MMAP_THRESHOLD)``, which also turns the adjustment off) keeps
every large buffer a mapping of its own, unmapped when freed; the cost is
the page faults of a fresh mapping, well under a millisecond per megabyte.
Not glibc (musl, macOS): nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
#: Buffers from this size on get a mapping of their own: every image buffer, none of the small objects.
MMAP_THRESHOLD = 1 << 20


def return_large_buffers() -> bool:
    """Make glibc map (and unmap) each buffer of ``MMAP_THRESHOLD`` or more on its own; True when it took the setting.

    Process-wide and idempotent: the daemon calls it when ingest starts, each ingest worker when it starts.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1)
    if not done:
        log.info("malloc did not take M_MMAP_THRESHOLD; freed image buffers may stay resident")
    return done
