"""Ingest worker processes: every file is parsed, decoded, fixed and de-identified outside the daemon, under a hard time limit.

The life of one file::

    caller thread (receiver association, drop folder, CLI)
      take an idle worker ──> send Request down its pipe ──> wait at most timeout_s
          answer    -> worker back to idle; Prepared / Refused go to the caller, who stores or quarantines
          no answer -> SIGKILL the worker (a decoder stuck in C ignores anything gentler),
                       start a fresh one in the background, the file is Refused("timeout")
          pipe EOF  -> the worker died on the file (a segfault in a decoder, the OOM killer):
                       a fresh one is started, the file is Refused("worker_crashed")

The parent keeps the only database connection and the master key; a
worker gets ``Options`` (limits and the derived de-identification secrets)
when it starts. Workers are started with ``spawn``: a fresh interpreter
that inherits no threads, locks or SQLite connections from the daemon
(forking a process that holds them is unsafe). Each caller thread talks to
one worker at a time, so files from different threads run in parallel, one
per worker; the pool is sized by ``ingest_workers`` (0 = one per core).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from edge_agent.errors import IngestUnavailable
from edge_agent.ingest.memory import return_large_buffers
from edge_agent.ingest.prepare import Options, Prepared, Refused, Request, Unreadable, prepare

log = logging.getLogger(__name__)

Outcome = Prepared | Refused | Unreadable
Work = Callable[[Request, Options], Outcome]

TIMEOUT = "timeout"
WORKER_CRASHED = "worker_crashed"
_READY = "ready"
_TAKEN = "taken"
_BULK = "bulk"  # a Prepared whose file follows as raw bytes
_BULK_BYTES = 1 << 20
_START_ATTEMPTS = 3
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [ingest worker %(process)d]: %(message)s"


def usable_cores() -> int:
    """Cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(setting: int, cores: int | None = None) -> int:
    """``ingest_workers``: a positive number is taken as is; 0 means one worker per usable core."""
    return setting if setting > 0 else max(1, usable_cores() if cores is None else cores)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _exit_with_parent(parent: int) -> None:
    """A worker stuck on a file outlives a parent killed with SIGKILL (the pipe's EOF is only read between files): end it."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _worker_main(conn: Connection, options: Options, work: Work, log_level: int) -> None:
    """A worker's whole life: answer one request at a time until the pipe closes or None arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent decides
    return_large_buffers()  # each file's buffers leave with it (see memory)
    # A spawned interpreter has no logging set up: log as the CLI does, to the same stderr, naming the worker.
    logging.basicConfig(level=log_level, format=LOG_FORMAT, stream=sys.stderr)
    warnings.simplefilter("ignore")  # pydicom warns on every oddity of broken input; each becomes a fix or a refusal
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    conn.send((_READY, os.getpid()))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if request is None:
            return
        try:
            conn.send(_TAKEN)  # from here on a death is this file's doing, not an idle worker's
        except (BrokenPipeError, OSError):
            return
        try:
            outcome: Any = work(request, options)
        except Exception as exc:  # prepare() already turns a file's faults into Refused: this is a bug
            outcome = Refused("internal_error", f"Unexpected {type(exc).__name__} in an ingest worker; the file is kept. Report it with `mammo quarantine show`.")
        try:
            if isinstance(outcome, Prepared) and len(outcome.data) >= _BULK_BYTES:
                # The de-identified file goes as raw bytes after its facts: pickling it would copy it once more on each side.
                conn.send((_BULK, dataclasses.replace(outcome, data=b"")))
                conn.send_bytes(outcome.data)
            else:
                conn.send(outcome)
        except (BrokenPipeError, OSError):
            return


def _receive(conn: Connection) -> Outcome:
    """A worker's answer; a large de-identified file arrives as raw bytes after the rest of it (see ``_worker_main``)."""
    message = conn.recv()
    if isinstance(message, tuple) and len(message) == 2 and message[0] == _BULK:
        prepared: Prepared = message[1]
        return dataclasses.replace(prepared, data=conn.recv_bytes())
    outcome: Outcome = message
    return outcome


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx: Any, options: Options, work: Work) -> None:
        here, there = ctx.Pipe(duplex=True)
        args = (there, options, work, logging.getLogger().getEffectiveLevel())
        self.process = ctx.Process(target=_worker_main, args=args, name="mammo-ingest-worker", daemon=True)
        self.process.start()
        there.close()
        self.conn: Connection = here
        self.pid: int = self.process.pid

    def wait_ready(self, timeout: float) -> bool:
        if not wait([self.conn, self.process.sentinel], timeout):
            return False
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            return False
        return isinstance(message, tuple) and message[0] == _READY

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self.conn.close()

    def stop(self, grace_s: float) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(grace_s)
        self.kill()


class IngestPool:
    """A fixed number of worker processes shared by every ingest thread; ``run`` is thread-safe and blocks for one file."""

    def __init__(self, options: Options, *, workers: int, timeout_s: float, work: Work = prepare,
                 start_timeout_s: float = 120.0) -> None:
        if workers < 1:
            raise ValueError("an ingest pool needs at least one worker")
        self.options = options
        self.size = workers
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self._work = work
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        self._lock = threading.Lock()
        self._workers: set[_Worker] = set()  # started and ready, idle or busy
        self._starting = 0
        self._closed = False
        self.replaced = 0  # workers killed (timeout) or found dead and replaced since start

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> IngestPool:
        """Start every worker at once and wait until each has imported its libraries and said it is ready."""
        with self._lock:
            self._starting += self.size
        starting = [self._launch() for _ in range(self.size)]
        for w in starting:
            self._admit(w, w is not None and w.wait_ready(self.start_timeout_s))
        if not self._workers:
            self.close()
            raise IngestUnavailable("No ingest worker process could start; see the log above for why (memory, a broken install), fix it and start the box again.")
        return self

    def __enter__(self) -> IngestPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, grace_s: float = 10.0) -> None:
        """Stop idle workers now; busy ones finish their file (up to ``grace_s``), then are killed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._drain_idle(grace_s)
        end = time.monotonic() + grace_s
        while time.monotonic() < end:
            with self._lock:
                if not self._workers:
                    return
            time.sleep(0.05)
            self._drain_idle(grace_s)
        with self._lock:
            left = list(self._workers)
            self._workers.clear()
        for w in left:
            w.kill()

    def pids(self) -> list[int]:
        """Process ids of the live workers (for status pages and tests)."""
        with self._lock:
            return sorted(w.pid for w in self._workers)

    # -- one file --------------------------------------------------------------------------------
    def run(self, request: Request) -> Outcome:
        """Prepare one file in a worker; a file that hangs or kills its worker comes back as ``Refused``."""
        for _ in range(self.size + _START_ATTEMPTS):
            w = self._take()
            if self._hand_over(w, request):
                break
            self._lose(w, replace=True)  # it died while idle (OOM killer, a person): not this file's doing
        else:
            raise IngestUnavailable("Ingest workers keep dying before they can take a file; check memory and the log, then send the file again.")
        if not wait([w.conn, w.process.sentinel], self.timeout_s):
            w.kill()
            self._lose(w, replace=True)
            log.warning("ingest worker %d passed the %g s limit on a file: killed and replaced", w.pid, self.timeout_s)
            return Refused(TIMEOUT, f"Processing took longer than ingest_timeout_s={self.timeout_s:g} s; the worker was stopped. "
                           "Release the file from quarantine on a less busy box, or raise ingest_timeout_s.")
        try:
            outcome: Outcome = _receive(w.conn)
        except (EOFError, OSError):
            w.process.join(10)
            how = describe_exit(w.process.exitcode)
            self._lose(w, replace=True)
            if self._closed:
                raise IngestUnavailable("Ingest is shutting down; nothing was stored. Send the file again once the box is up.") from None
            log.error("ingest worker %d died on a file (%s); replaced", w.pid, how)
            return Refused(WORKER_CRASHED, f"The worker processing this file died ({how}): a decoder crashed on it. "
                           "The file is kept; re-export it from the modality, or report it with `mammo quarantine show`.")
        self._give_back(w)
        return outcome

    def _hand_over(self, w: _Worker, request: Request) -> bool:
        """Send the file and wait for the worker to say it took it; False if it was already dead."""
        try:
            w.conn.send(request)
            if not wait([w.conn], self.start_timeout_s):
                return False
            return bool(w.conn.recv() == _TAKEN)
        except (OSError, ValueError, EOFError):
            return False

    # -- bookkeeping -----------------------------------------------------------------------------
    def _take(self) -> _Worker:
        while True:
            with self._lock:
                if self._closed:
                    raise IngestUnavailable("Ingest is shutting down; nothing was stored. Send the file again once the box is up.")
                if not self._workers and self._starting == 0:
                    raise IngestUnavailable("No ingest worker is running and none could be started; see the log for why, then restart the box.")
            try:
                w = self._idle.get(timeout=0.5)
            except queue.Empty:
                continue
            if w is None:  # a wake-up: a start failed, or the pool closed
                continue
            if w.process.is_alive():
                return w
            self._lose(w, replace=True)

    def _give_back(self, w: _Worker) -> None:
        with self._lock:
            closed = self._closed
            if closed:
                self._workers.discard(w)
        if closed:
            w.stop(2.0)
        else:
            self._idle.put(w)

    def _lose(self, w: _Worker, *, replace: bool) -> None:
        w.kill()
        with self._lock:
            self._workers.discard(w)
            replace = replace and not self._closed
            if replace:
                self._starting += 1
                self.replaced += 1
        if replace:
            threading.Thread(target=self._start_one, name="ingest-pool-start", daemon=True).start()

    def _launch(self) -> _Worker | None:
        try:
            return _Worker(self._ctx, self.options, self._work)
        except OSError as exc:
            log.error("cannot start an ingest worker process: %s", exc)
            return None

    def _start_one(self) -> None:
        for attempt in range(_START_ATTEMPTS):
            w = self._launch()
            if w is not None and w.wait_ready(self.start_timeout_s):
                self._admit(w, True)
                return
            if w is not None:
                w.kill()
            log.error("an ingest worker did not start (attempt %d of %d)", attempt + 1, _START_ATTEMPTS)
            time.sleep(min(5.0, 0.5 * 2 ** attempt))
        self._admit(None, False)

    def _admit(self, w: _Worker | None, ready: bool) -> None:
        with self._lock:
            self._starting -= 1
            closed = self._closed
            if ready and w is not None and not closed:
                self._workers.add(w)
        if w is not None and (not ready or closed):
            w.kill()
        self._idle.put(w if ready and not closed else None)

    def _drain_idle(self, grace_s: float) -> None:
        while True:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                return
            if w is None:
                continue
            with self._lock:
                self._workers.discard(w)
            w.stop(grace_s)
