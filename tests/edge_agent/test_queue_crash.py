"""Crash safety with real processes: SIGKILL at random moments, SIGTERM mid-job."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent.bench.queue import leases_held_by, run_soak, worker_name
from edge_agent.queue import JobQueue
from edge_agent.store import open_database

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_worker_killed_at_random_moments_loses_nothing_and_completes_nothing_twice(tmp_path):
    result = run_soak(200, seed=7, home=tmp_path)
    assert result["kills_after_lease_signal"] == 200, "each kill waits until the worker says it holds a lease"
    assert result["kills_that_hit_a_lease"] > 180, "the kills must land while the killed worker holds a lease"
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert result["jobs_done"] == result["jobs_enqueued"]
    assert result["integrity_check"] == "ok"


def test_a_kill_hits_a_lease_only_when_the_killed_worker_held_one(tmp_path):
    """A lease left by an earlier kill does not make a later kill count as hitting a lease."""
    db = open_database(tmp_path / "soak.sqlite3")
    q = JobQueue(db)
    q.enqueue("soak", {"n": 1})
    assert q.claim("soak", worker=worker_name(111), lease_s=60)  # worker 111 was killed holding this lease
    assert leases_held_by(db, worker_name(222)) == 0  # worker 222 was killed before it claimed anything
    assert leases_held_by(db, worker_name(111)) == 1
    db.conn.close()


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


DRAINER = textwrap.dedent(
    """
    import sys
    from edge_agent.queue import JobQueue
    from edge_agent.store import open_database
    from edge_agent.worker import Worker

    db = open_database(sys.argv[1])
    q = JobQueue(db)
    w = Worker(q, "infer", lambda job: (lambda d: d.execute("INSERT INTO results VALUES (?, ?)", [job.id, sys.argv[2]])), name=sys.argv[2])
    print(w.run(drain=True).done, flush=True)
    """
)


def test_workers_in_parallel_processes_complete_every_job_exactly_once(tmp_path):
    """The claim is a read then a compare-and-set: racing processes never both lease one job."""
    path = tmp_path / "box.sqlite3"
    db = open_database(path)
    db.execute("CREATE TABLE results (job_id INTEGER, worker TEXT)")
    q = JobQueue(db)
    ids = {q.enqueue("infer", {"n": i}).job_id for i in range(1500)}
    procs = [subprocess.Popen([sys.executable, "-c", DRAINER, str(path), f"w{k}"], stdout=subprocess.PIPE, text=True, cwd=REPO)
             for k in range(3)]
    done = [int(p.communicate(timeout=300)[0].strip()) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    rows = db.execute("SELECT job_id, count(*) FROM results GROUP BY job_id").fetchall()
    assert {r[0] for r in rows} == ids and all(r[1] == 1 for r in rows)
    assert sum(done) == 1500
    assert q.stats()["infer"].done == 1500
    db.conn.close()
