"""Crash safety with real processes: SIGKILL at random moments, SIGTERM mid-job."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent.bench.queue import run_soak
from edge_agent.queue import JobQueue
from edge_agent.store import open_database

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_worker_killed_at_random_moments_loses_nothing_and_completes_nothing_twice(tmp_path):
    result = run_soak(300, seed=7, home=tmp_path)
    assert result["killed_while_holding_a_lease"] > 50, "the kills must land while jobs are in hand"
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert result["jobs_done"] == result["jobs_enqueued"]
    assert result["integrity_check"] == "ok"


WORKER = textwrap.dedent(
    """
    import sys, time
    from edge_agent.queue import JobQueue
    from edge_agent.store import open_database
    from edge_agent.worker import Worker

    db = open_database(sys.argv[1])
    q = JobQueue(db)

    def handler(job):
        print("started", job.id, flush=True)
        time.sleep(1.0)
        return lambda d: d.execute("INSERT INTO results VALUES (?)", [job.id])

    w = Worker(q, "infer", handler, name="t", poll_s=0.05)
    w.install_signal_handlers()
    w.run()
    print("stopped", w.counters.done, flush=True)
    """
)


def test_sigterm_finishes_the_job_in_hand_and_leaves_the_rest_queued(tmp_path):
    path = tmp_path / "box.sqlite3"
    db = open_database(path)
    db.execute("CREATE TABLE results (job_id INTEGER)")
    q = JobQueue(db)
    ids = [q.enqueue("infer", {"n": i}).job_id for i in range(5)]
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().split() == ["started", str(ids[0])]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out.strip().endswith("stopped 1")
    assert [r[0] for r in db.execute("SELECT job_id FROM results")] == [ids[0]]
    s = q.stats()["infer"]
    assert (s.done, s.ready, s.leased) == (1, 4, 0)
