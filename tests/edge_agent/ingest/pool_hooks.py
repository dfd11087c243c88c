"""Worker functions for the pool tests: a file that hangs, one that crashes its worker, two that must meet.

Not a test module: the tests put this folder on ``sys.path`` and hand these
functions to the pool, whose spawned workers import them by name. Each
looks for a marker in the file's bytes and otherwise prepares the file as
the daemon does.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from edge_agent.ingest.prepare import Options, Refused, Request, prepare


def _bytes(request: Request) -> bytes:
    return request.data if request.data is not None else Path(str(request.path)).read_bytes()


def misbehave(request: Request, options: Options):
    """HANG-FOREVER: loop ignoring SIGTERM (only SIGKILL ends it); CRASH-SEGV: die as a crashing decoder does."""
    data = _bytes(request)
    if b"HANG-FOREVER" in data:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(0.1)
    if b"CRASH-SEGV" in data:
        os.kill(os.getpid(), signal.SIGSEGV)
    if b"EXIT-NOW" in data:
        os._exit(3)
    return prepare(request, options)


def meet(request: Request, options: Options):
    """MEET:<folder>: note this worker's pid there, then wait (60 s at most) until another worker has too.

    Two files can only both get past the wait if two workers hold them at the same time.
    """
    data = _bytes(request)
    start = data.find(b"MEET:")
    if start < 0:
        return prepare(request, options)
    folder = Path(data[start + 5:data.index(b"|", start)].decode())
    (folder / str(os.getpid())).touch()
    end = time.monotonic() + 60
    while len(list(folder.iterdir())) < 2:
        if time.monotonic() > end:
            return Refused("alone", "no other worker arrived")
        time.sleep(0.02)
    return prepare(request, options)


def open_files(request: Request, options: Options):
    """What this worker process has open, as a refusal's reason (JSON)."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return Refused("open_files", json.dumps(paths))
