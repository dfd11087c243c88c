"""Daemon hook for ``mammo up``: inference workers on the chosen hardware profile."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import sqlite_utils

from edge_agent.box import Box, retry_policy
from edge_agent.errors import MammoError, ModelError
from edge_agent.inference.activation import ModelRegistry
from edge_agent.inference.viewcache import ViewCache
from edge_agent.inference.worker import InferenceHandler
from edge_agent.ingest.image_store import ImageStore
from edge_agent.ingest.memory import return_large_buffers
from edge_agent.ingest.service import IngestPaths
from edge_agent.queue import JobQueue
from edge_agent.store import open_database, transaction
from edge_agent.worker import Worker
from hardware_profiles.detect import detect
from hardware_profiles.profiles import Profile, load_profiles
from hardware_profiles.runtime import open_on_profile
from hardware_profiles.select import Choice, choose

if TYPE_CHECKING:
    from models.release_files import Release
    from models.runtime import Screener

log = logging.getLogger(__name__)

INFER_QUEUE = "infer"


def choose_profile(box: Box) -> tuple[Choice, dict[str, Profile], str | None]:
    profiles = load_profiles()
    facts = detect(tuple(n for p in profiles.values() for n in p.delegates), box.settings.infer_tflite_delegate)
    choice = choose(profiles, facts, box.settings.infer_profile)
    delegate = facts.delegates[0][1] if facts.delegates else None
    return choice, profiles, delegate


def record_runtime(db: sqlite_utils.Database, profile: str, backend: str, version: str, fallback_reason: str | None) -> None:
    with transaction(db) as d:
        d.execute(
            "INSERT OR REPLACE INTO infer_runtime (id, profile, backend, model_version, fallback_reason, updated_at) VALUES (1, ?, ?, ?, ?, ?)",
            [profile, backend, version, fallback_reason, time.time()],
        )


#: How often the view poller looks for newly stored views that ingest did not hand over (seconds); handed-over
#: views wake it at once.
POLL_S = 0.05
#: How often an idle inference worker looks for a job: a claim is one indexed statement (about 0.1 ms), so 40 a
#: second cost little and take 25 ms off a study's wait on average.
JOB_POLL_S = 0.025


#: Pause before an inference worker claims again after the database refused it (seconds).
RETRY_S = 1.0


def keep_running(worker: Worker, stop: threading.Event) -> None:
    """A worker's loop, resumed after a box-level failure outside any job (the database stayed locked past its
    busy timeout while the worker claimed its next job): such a failure used to end the thread, and with it
    all screening until the daemon restarted. A job's own failures never reach here (the worker records them)."""
    while not stop.is_set():
        try:
            worker.run()
            return
        except MammoError as exc:
            log.error("inference worker %s: %s; claiming again in %g s", worker.name, exc, RETRY_S)
            stop.wait(RETRY_S)


def fixed_backend_factory(db: sqlite_utils.Database, backend: str, threads: int) -> Callable[[Release], Screener]:
    """Another model form (``mammo bench study`` runs the PyTorch original this way), recorded like a profile."""
    from models.runtime import Screener

    def factory(release: Release) -> Screener:
        record_runtime(db, f"bench:{backend}", backend, release.version, None)
        return Screener(release, backend=backend, threads=threads)

    return factory


def make_handler(box: Box, choice: Choice, profiles: dict[str, Profile], delegate: str | None, *,
                 views: ViewCache | None = None, backend: str | None = None) -> InferenceHandler:
    """One handler with its own database connection (a worker thread owns it)."""
    db = open_database(box.settings.db_path, max_size_mb=box.settings.db_max_size_mb)
    queue = JobQueue(db, retry_policy(box.settings))
    store = ImageStore(IngestPaths.of(box.settings).images, box.keystore.master_key())
    registry = ModelRegistry(db, box.settings, keystore=box.keystore)

    def factory(release: Release) -> Screener:
        opened = open_on_profile(release, choice.profile, profiles, delegate)
        record_runtime(db, opened.profile.name, opened.backend, release.version, opened.fallback_reason)
        return cast("Screener", opened.screener)

    chosen = factory if backend is None else fixed_backend_factory(db, backend, choice.profile.threads)
    return InferenceHandler(queue, store, registry, chosen, profile=choice.profile.name, parallel=choice.profile.threads, views=views,
                            work_images=box.work_images)


def start_workers(box: Box, stop: threading.Event, *, backend: str | None = None) -> tuple[list[InferenceHandler], list[threading.Thread]]:
    """The profile's inference workers, and one thread preparing views as they are stored (see viewcache)."""
    return_large_buffers()  # a view decoded here (not handed over by ingest) leaves with its buffers (see edge_agent.ingest.memory)
    choice, profiles, delegate = choose_profile(box)
    log.info("hardware profile %s: %s", choice.profile.name, dict(choice.reasons).get(choice.profile.name))
    ModelRegistry(box.db, box.settings, keystore=box.keystore).ensure_active()
    views = ViewCache(choice.profile.threads)
    handlers, threads = [], []
    for i in range(choice.profile.workers):
        handler = make_handler(box, choice, profiles, delegate, views=views, backend=backend)
        worker = Worker(handler.queue, INFER_QUEUE, handler, name=f"infer-{i}", lease_s=box.settings.queue_lease_s, poll_s=JOB_POLL_S, stop=stop)
        handlers.append(handler)
        threads.append(threading.Thread(target=keep_running, args=(worker, stop), name=f"infer-{i}", daemon=True))

    if handlers:
        try:  # load the model now: ingest reduces each view for its input size from the first image on (decode once)
            handlers[0].screener()
        except ModelError:
            pass  # no usable model: the jobs say so

    poll_db = open_database(box.settings.db_path, max_size_mb=box.settings.db_max_size_mb)  # the poller's own (see prepare_ahead)

    def prepare_ahead() -> None:
        handed = box.work_images
        try:
            while not stop.is_set():
                try:
                    if handed is not None:  # woken as soon as ingest hands a view over; otherwise every POLL_S
                        handlers[0].prepare_offered(handed.wait(POLL_S))
                    elif stop.wait(POLL_S):
                        break
                    handlers[0].prepare_ahead(poll_db)
                except Exception:  # a bad view is the job's to report; the poller must not die of it
                    log.exception("preparing newly stored views failed; the inference jobs will prepare them")
        finally:
            poll_db.conn.close()

    threads.append(threading.Thread(target=prepare_ahead, name="infer-views", daemon=True))
    for t in threads:
        t.start()
    return handlers, threads


def start_services(box: Box, stop: threading.Event) -> list[threading.Thread]:
    """Daemon hook for ``mammo up``."""
    return start_workers(box, stop)[1]
