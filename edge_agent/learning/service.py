"""The daemon's side of local training: a persistent schedule that asks the policy and starts a training process.

APScheduler's ``BackgroundScheduler`` with a ``SQLAlchemyJobStore`` in
``$MAMMO_HOME/learning/schedule.sqlite3``: the job is stored by name
(``edge_agent.learning.service:scheduled_check``) with its next run time,
so a reboot resumes the schedule where it was instead of starting over.
Every ``train_check_interval_s`` the job reads the box's state, asks the
policy, records the decision with its reasons, and, if it says train,
starts ``python -m edge_agent.learning.runner`` as a separate process
(SCHED_IDLE, one torch thread): a round never shares the daemon's memory or
its GIL with screening, and a power cut or SIGKILL of the round is just a
process ending (the ledger and the checkpoint take care of the rest).
Only one training process runs at a time (the runner's lock). At shutdown
the daemon sends it SIGTERM: it checkpoints and ends paused.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from edge_agent.box import Box
from edge_agent.settings import Settings

log = logging.getLogger(__name__)

JOB_ID = "learning-policy-check"
JOB_FUNC = "edge_agent.learning.service:scheduled_check"
SCHEDULE_FILE = "schedule.sqlite3"
STOP_WAIT_S = 30.0

_children: list[subprocess.Popen[bytes]] = []
_children_lock = threading.Lock()


def schedule_path(settings: Settings) -> Path:
    from edge_agent.learning.runner import learning_dir

    return learning_dir(settings) / SCHEDULE_FILE


def make_scheduler(settings: Settings) -> Any:
    """A scheduler whose jobs live in the box home (one worker thread: a check never overlaps the next)."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    path = schedule_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{path}")},
                               executors={"default": ThreadPoolExecutor(1)},
                               job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600})


def ensure_job(scheduler: Any, settings: Settings, config: str | None = None) -> Any:
    """The policy check, kept as stored (its next run time survives a restart) unless its interval or arguments changed."""
    kwargs = {"home": str(settings.home), "config": config}
    job = scheduler.get_job(JOB_ID)
    interval = float(settings.train_check_interval_s)
    if job is not None and job.kwargs == kwargs and float(job.trigger.interval.total_seconds()) == interval:
        return job
    return scheduler.add_job(JOB_FUNC, "interval", seconds=interval, id=JOB_ID, kwargs=kwargs, replace_existing=True)


def scheduled_check(home: str, config: str | None = None) -> subprocess.Popen[bytes] | None:
    """The stored job: ask the policy and, if it allows, start a training process (returned; None when none was started)."""
    from edge_agent.errors import MammoError
    from edge_agent.inference.activation import ModelRegistry
    from edge_agent.learning import ledger, policy, runner
    from edge_agent.store import open_database

    _reap()
    settings = Settings.load(Path(config) if config else None, env={**os.environ, "MAMMO_HOME": home})
    if runner.RunnerLock(settings).held_elsewhere():
        log.debug("training process already running")
        return None
    try:
        db = open_database(settings.db_path, max_size_mb=settings.db_max_size_mb)
    except MammoError as exc:
        log.error("training check: %s", exc)
        return None
    try:
        act = ModelRegistry(db, settings).active()
        if act is None:
            ledger.record_decision(db, False, ["no active model yet"], {})
            return None
        ledger.ensure_generation(db, act.generation, settings.train_epsilon_budget, settings.train_delta)
        state = runner.box_state(db, settings, act.generation)
        decision = policy.decide(state, runner.policy_config(settings))
        ledger.record_decision(db, decision.train, decision.reasons, {k: str(v) for k, v in vars(state).items()})
    finally:
        db.conn.close()
    if not decision.train:
        log.info("no training round now: %s", "; ".join(decision.reasons))
        return None
    return start_process(settings, config)


def start_process(settings: Settings, config: str | None = None, *args: str) -> subprocess.Popen[bytes]:
    """Start the training process (its outcome goes to the log; its JSON line to stdout, discarded here)."""
    cmd = [sys.executable, "-m", "edge_agent.learning.runner", *(["--config", config] if config else []), *args]
    proc = subprocess.Popen(cmd, env={**os.environ, "MAMMO_HOME": str(settings.home)}, stdout=subprocess.DEVNULL)
    with _children_lock:
        _children.append(proc)
    log.info("training process %d started", proc.pid)
    return proc


def _reap() -> None:
    with _children_lock:
        for p in [p for p in _children if p.poll() is not None]:
            _children.remove(p)
            log.info("training process %d ended (%s)", p.pid, p.returncode)


def stop_processes(timeout_s: float = STOP_WAIT_S) -> None:
    """SIGTERM every training process this daemon started: each checkpoints and ends with its round paused."""
    with _children_lock:
        procs = list(_children)
        _children.clear()
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("training process %d did not stop in %.0f s; killing it (its checkpoint remains)", p.pid, timeout_s)
            p.kill()
            p.wait()


def start_services(box: Box, stop: threading.Event) -> list[threading.Thread]:
    """The daemon's hook (``edge_agent.daemon.SERVICES``): start the persistent schedule; stop it with the daemon."""
    scheduler = make_scheduler(box.settings)
    scheduler.start()
    job = ensure_job(scheduler, box.settings)
    log.info("local training: policy checked every %.0f s (next %s), window %s, budget epsilon %.2f per model generation",
             box.settings.train_check_interval_s, job.next_run_time, box.settings.train_window, box.settings.train_epsilon_budget)

    def watch() -> None:
        stop.wait()
        scheduler.shutdown(wait=True)
        stop_processes()

    t = threading.Thread(target=watch, name="learning-scheduler", daemon=True)
    t.start()
    return [t]
