"""The worker runner: claims jobs from one queue and runs a handler on each.

A handler takes a :class:`~edge_agent.queue.Job` and returns either None or
an *effect*: a function that writes the job's result into the database.
The runner applies the effect inside the ack transaction, so a result is
stored exactly once.  Work outside the database (files, network) must be
idempotent, since a killed worker's job runs again.

On SIGTERM/SIGINT the runner finishes the job in hand, acks it, and stops;
a job claimed but not started is released without spending an attempt.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.errors import LeaseLost, MammoError
from edge_agent.queue import Effect, Job, JobQueue

log = logging.getLogger(__name__)

Handler = Callable[[Job], Effect | None]


@dataclass
class WorkerCounters:
    done: int = 0
    failed: int = 0
    lease_lost: int = 0


class Worker:
    def __init__(
        self,
        queue: JobQueue,
        queue_name: str,
        handler: Handler,
        *,
        name: str = "worker",
        lease_s: float = 60.0,
        poll_s: float = 0.5,
        stop: threading.Event | None = None,
    ) -> None:
        self.queue = queue
        self.queue_name = queue_name
        self.handler = handler
        self.name = name
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.stop = stop or threading.Event()
        self.counters = WorkerCounters()

    def install_signal_handlers(self) -> None:
        """Stop cleanly on SIGTERM and SIGINT (main thread only)."""
        def _stop(signum: int, _frame: object) -> None:
            log.info("%s: signal %s received, finishing the job in hand", self.name, signum)
            self.stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run_once(self) -> bool:
        """Claim and process one job; returns False when the queue had nothing ready."""
        job = self.queue.claim(self.queue_name, worker=self.name, lease_s=self.lease_s)
        if job is None:
            return False
        self._process(job, claim_next=False)
        return True

    def run(self, *, drain: bool = False) -> WorkerCounters:
        """Loop until stopped (or, with ``drain``, until the queue is empty).

        Acking a job and claiming the next happen in one commit while work
        keeps coming, which halves the fsyncs per job.
        """
        job: Job | None = None
        while not self.stop.is_set():
            if job is None:
                job = self.queue.claim(self.queue_name, worker=self.name, lease_s=self.lease_s)
                if job is None:
                    if drain:
                        break
                    self.stop.wait(self.poll_s)
                    continue
            job = self._process(job, claim_next=True)
        if job is not None:  # claimed but not started: give it back untouched
            self.queue.release(job)
        return self.counters

    def _process(self, job: Job, *, claim_next: bool) -> Job | None:
        """Run the handler; ack (and maybe claim the next job) or record the failure."""
        try:
            effect = self.handler(job)
        except Exception as exc:  # the handler's failure is the job's, not the worker's
            reason = str(exc) if isinstance(exc, MammoError) else f"{type(exc).__name__}: {exc}"
            try:
                state = self.queue.fail(job, reason)
            except LeaseLost:
                self.counters.lease_lost += 1
                return None
            self.counters.failed += 1
            log.warning("%s: job %s failed (%s), now %s", self.name, job.id, reason, state)
            return None
        try:
            if claim_next and not self.stop.is_set():
                nxt = self.queue.ack_and_claim(job, within=effect, worker=self.name, lease_s=self.lease_s)
            else:
                self.queue.ack(job, within=effect)
                nxt = None
            self.counters.done += 1
            return nxt
        except LeaseLost as exc:
            self.counters.lease_lost += 1
            log.warning("%s: %s", self.name, exc)
            return None
