"""Ingest in worker processes: a hanging or crashing file is quarantined with its reason, the worker replaced, and the box goes on.

Real spawned processes, a real box database and keystore; the workers'
function comes from ``pool_hooks`` (a marker in a file's bytes makes it
hang, crash or wait for another worker).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from edge_agent.errors import IngestUnavailable
from edge_agent.ingest import mg
from edge_agent.ingest.pool import TIMEOUT, WORKER_CRASHED, describe_exit, worker_count
from edge_agent.ingest.prepare import Request, prepare, prepare_in_process
from edge_agent.ingest.records import ACCEPTED, QUARANTINED
from edge_agent.ingest.service import IngestService
from edge_agent.queue import JobQueue
from edge_agent.settings import Settings
from edge_agent.store import open_database
from provisioning.keystore import FileKeystore, KdfParams


@pytest.fixture
def hooks(monkeypatch):
    """The test worker functions, importable by the spawned workers (they get this process's sys.path)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return importlib.import_module("pool_hooks")


@pytest.fixture
def pooled(tmp_path):
    """``pooled(work, workers=1, **settings)``: an ingest service whose files go through real worker processes."""
    made = []

    def make(work, workers: int = 1, **overrides) -> IngestService:
        home = tmp_path / f"home{len(made)}"
        settings = Settings.load(env={"MAMMO_HOME": str(home)}, home=home, **overrides)
        db = open_database(settings.db_path)
        keystore = FileKeystore.open_or_create(home / "keystore.json", "pool test", KdfParams(1, 8 * 1024, 1))
        made.append(IngestService(db=db, keystore=keystore, queue=JobQueue(db), settings=settings, workers=workers, work=work))
        return made[-1]

    yield make
    for service in made:
        service.close()
        service.db.conn.close()


def _marked(seed: int, marker: str) -> bytes:
    ds = mg.mammogram(mg.synthetic_pixels(seed, "L", 64), patient=mg.TURKISH_PATIENTS[seed % 3], laterality="L", view="CC")
    ds.ImageComments = marker
    return mg.to_bytes(ds)


def _in_thread(fn):
    """Run ``fn`` on another thread, as the receiver and the drop folder do (SIGALRM never fired there)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(120)
    assert out, "ingest did not return"
    return out[0]


def test_a_file_that_hangs_is_quarantined_for_timeout_and_the_next_one_is_ingested(pooled, hooks):
    service = pooled(hooks.misbehave, ingest_timeout_s=2.0)
    before = service.pool.pids()
    hung = _in_thread(lambda: service.ingest_bytes(_marked(1, "HANG-FOREVER"), source="test"))
    assert hung.outcome == QUARANTINED and hung.reason_code == TIMEOUT and "ingest_timeout_s=2" in hung.reason
    assert service.quarantine.entries()[0].reason_code == TIMEOUT  # the file is kept, with its reason
    after = _in_thread(lambda: service.ingest_bytes(_marked(2, "fine"), source="test"))
    assert after.outcome == ACCEPTED
    assert service.pool.pids() != before and service.pool.replaced == 1  # the stuck worker was killed, not reused


def test_a_worker_that_crashes_is_replaced_and_its_file_quarantined(pooled, hooks):
    service = pooled(hooks.misbehave)
    first = service.pool.pids()
    crashed = service.ingest_bytes(_marked(1, "CRASH-SEGV"), source="test")
    assert crashed.outcome == QUARANTINED and crashed.reason_code == WORKER_CRASHED and "SIGSEGV" in crashed.reason
    exited = service.ingest_bytes(_marked(2, "EXIT-NOW"), source="test")
    assert exited.reason_code == WORKER_CRASHED and "exit status 3" in exited.reason
    assert service.ingest_bytes(_marked(3, "fine"), source="test").outcome == ACCEPTED
    assert set(service.pool.pids()).isdisjoint(first) and service.pool.replaced == 2


def test_a_worker_killed_while_idle_costs_no_file(pooled, hooks):
    service = pooled(hooks.misbehave)
    [pid] = service.pool.pids()
    os.kill(pid, signal.SIGKILL)
    for _ in range(500):  # dead (a zombie until the pool reaps it) before the next file comes
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.02)
    result = service.ingest_bytes(_marked(1, "fine"), source="test")
    assert result.outcome == ACCEPTED and service.pool.pids() != [pid]


def test_a_dead_idle_worker_is_noticed_even_when_someone_else_reaped_it(pooled, hooks):
    # In the daemon another library may reap child processes (waitpid(-1)); then multiprocessing's
    # is_alive() still says True. The pool must not hand the next file to the dead worker.
    service = pooled(hooks.misbehave)
    [pid] = service.pool.pids()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    result = service.ingest_bytes(_marked(1, "fine"), source="test")
    assert result.outcome == ACCEPTED and service.pool.pids() != [pid]


def test_files_from_two_threads_are_prepared_by_two_workers_at_once(pooled, hooks, tmp_path):
    service = pooled(hooks.meet, workers=2)
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    results: list = []
    threads = [threading.Thread(target=lambda i=i: results.append(
        service.ingest_bytes(_marked(i, f"MEET:{meeting}|"), source="test"))) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # Each file waited in its worker until the other worker held the other file: both ran at once, in two processes.
    assert sorted(r.outcome for r in results) == [ACCEPTED, ACCEPTED]
    assert sorted(int(p.name) for p in meeting.iterdir()) == service.pool.pids()


def test_workers_hold_no_database_connection_or_file(pooled, hooks):
    service = pooled(hooks.open_files)
    result = service.ingest_bytes(b"x" * 200, source="test")
    opened = json.loads(result.reason)
    assert not [p for p in opened if "sqlite3" in p or str(service.settings.home) in p], opened


def test_a_closed_pool_refuses_files_so_the_sender_retries(pooled, hooks):
    service = pooled(hooks.misbehave)
    pids = service.pool.pids()
    service.close()
    with pytest.raises(IngestUnavailable):
        service.ingest_bytes(_marked(1, "fine"), source="test")
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]  # the worker processes are gone and reaped


def test_worker_count_follows_the_cores_unless_set():
    assert worker_count(0, cores=2) == 2 and worker_count(0, cores=16) == 16 and worker_count(3, cores=16) == 3
    assert worker_count(0, cores=0) == 1


def test_exit_descriptions_name_the_signal():
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV" and describe_exit(3) == "exit status 3"


_PARENT = """
import sys, threading, time
sys.path.insert(0, {hooks_dir!r})
import pool_hooks
from edge_agent.ingest.deid import DeidKeys
from edge_agent.ingest.pool import IngestPool
from edge_agent.ingest.prepare import Options, Request
from edge_agent.ingest.reader import ReadLimits

if __name__ == "__main__":
    pool = IngestPool(Options(ReadLimits(), DeidKeys(b"u" * 32, b"d" * 32, b"p" * 32)), workers=1, timeout_s=600,
                      work=pool_hooks.misbehave).start()
    threading.Thread(target=pool.run, args=(Request(data=b"HANG-FOREVER"),), daemon=True).start()
    print(pool.pids()[0], flush=True)
    time.sleep(600)
"""


def test_a_worker_stuck_on_a_file_ends_when_the_daemon_is_killed(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(_PARENT.format(hooks_dir=str(Path(__file__).parent)))
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as parent:
        try:
            worker = int(parent.stdout.readline())
        finally:
            parent.kill()  # SIGKILL: no atexit, no chance to stop its workers
    for _ in range(1000):
        stat = Path(f"/proc/{worker}/stat")
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.02)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the ingest worker outlived its killed parent")



def test_the_kiosk_upload_prepares_files_in_the_daemons_workers(pooled, hooks):
    # One pool per daemon: the kiosk's upload shares the ingest service's workers and their time limit.
    from edge_agent.box import Box
    from kiosk_ui.services import KioskServices
    from kiosk_ui.uploads import ingest_one

    service = pooled(hooks.misbehave, ingest_timeout_s=2.0)
    keystore = FileKeystore.open(service.settings.home / "keystore.json", "pool test")
    box = Box(service.settings, service.db, keystore, service.queue, ingest_pool=service.pool)
    kiosk = KioskServices.from_box(box)
    try:
        assert kiosk.ingest.pool is service.pool
        hung = _in_thread(lambda: ingest_one(kiosk.ingest, "hang.dcm", _marked(1, "HANG-FOREVER"), 1 << 30))
        assert not hung.ok and hung.message_key == "upload.quarantined" and hung.params["reason"] == TIMEOUT  # in process: hangs for good
    finally:
        kiosk.close()  # not its pool: the daemon's workers keep running
    assert service.ingest_bytes(_marked(2, "fine"), source="test").outcome == ACCEPTED


def test_a_large_file_comes_back_from_its_worker_whole(pooled):
    """A detector-sized de-identified file crosses the pipe as raw bytes after its facts; what is stored is what prepare made."""
    service = pooled(prepare)
    ds = mg.mammogram(mg.synthetic_pixels(5, "R", 1536), patient=mg.TURKISH_PATIENTS[0], laterality="R", view="MLO")
    data = mg.to_bytes(ds)
    result = service.ingest_bytes(data, source="test")
    assert result.outcome in (ACCEPTED, "fixed") and result.laterality == "R"
    expected = prepare_in_process(Request(data=data), service.options)
    assert len(expected.data) > 2 << 20 and service.store.get(result.digest) == expected.data
