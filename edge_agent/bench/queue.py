"""``mammo bench queue``: our durable queue against persist-queue and huey, same workload, same run.

Workload: enqueue N small jobs (one commit each), then claim and ack them
one at a time, as the shipped worker does (the ack of one job and the claim
of the next share a commit; the peers have no such call).  Every store runs in WAL mode with synchronous=FULL (fsync
at commit), which is how the box ships.  huey's storage has no
acknowledgement (dequeue deletes the row), so it does less work per job
than a crash-safe queue must; it is the speed ceiling, not an equal.

The soak mode forks a real worker process, SIGKILLs it at random moments,
restarts it, and afterwards counts jobs lost and jobs completed twice.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from edge_agent.bench import percentile
from edge_agent.queue import JobQueue, RetryPolicy
from edge_agent.store import open_database

PAYLOAD = {"study": "1.2.826.0.1.3680043.8.498.1", "views": 4}


def _run(name: str, put: Callable[[int], None], claim_ack: Callable[[], bool], n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    for i in range(n):
        put(i)
    t1 = time.perf_counter()
    claims: list[float] = []
    for _ in range(n):
        c0 = time.perf_counter()
        if not claim_ack():
            raise RuntimeError(f"{name}: queue ran dry before {n} jobs")
        claims.append(time.perf_counter() - c0)
    t2 = time.perf_counter()
    return {
        "jobs_per_s": round(n / (t2 - t0), 1),
        "enqueue_per_s": round(n / (t1 - t0), 1),
        "claim_ack_per_s": round(n / (t2 - t1), 1),
        "claim_ack_p50_ms": round(percentile(claims, 50) * 1000, 3),
        "claim_ack_p99_ms": round(percentile(claims, 99) * 1000, 3),
    }


def bench_ours(root: Path, n: int) -> dict[str, Any]:
    db = open_database(root / "mammo.sqlite3")
    q = JobQueue(db)

    held: list = []

    def claim_ack() -> bool:
        # As the shipped Worker runs: the ack of one job and the claim of the next share a commit.
        job = held.pop() if held else q.claim("infer", worker="bench", lease_s=60)
        if job is None:
            return False
        nxt = q.ack_and_claim(job, worker="bench", lease_s=60)
        if nxt is not None:
            held.append(nxt)
        return True

    out = _run("mammo", lambda i: q.enqueue("infer", {**PAYLOAD, "i": i}, key=f"k{i}"), claim_ack, n)
    db.conn.close()
    return out


def bench_persist_queue(root: Path, n: int) -> dict[str, Any]:
    from persistqueue import SQLiteAckQueue

    q = SQLiteAckQueue(str(root / "persistqueue"), auto_commit=True)
    q._conn.execute("PRAGMA synchronous=FULL")

    def claim_ack() -> bool:
        item = q.get(block=False)
        q.ack(item)
        return True

    out = _run("persist-queue", lambda i: q.put({**PAYLOAD, "i": i}), claim_ack, n)
    q.close()
    return out


def bench_huey(root: Path, n: int) -> dict[str, Any]:
    import json

    from huey.storage import SqliteStorage

    s = SqliteStorage(name="infer", filename=str(root / "huey.sqlite3"), fsync=True, journal_mode="wal")
    out = _run("huey", lambda i: s.enqueue(json.dumps({**PAYLOAD, "i": i}).encode()), lambda: s.dequeue() is not None, n)
    s.close()
    return out


def run_bench(n: int = 2000) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mammo-bench-queue-") as tmp:
        root = Path(tmp)
        results["mammo JobQueue"] = bench_ours(root, n)
        results["persist-queue SQLiteAckQueue"] = bench_persist_queue(root, n)
        results["huey SqliteStorage (no ack)"] = bench_huey(root, n)
    ours = results["mammo JobQueue"]["jobs_per_s"]
    peer_ack = results["persist-queue SQLiteAckQueue"]["jobs_per_s"]
    best_name = max((k for k in results if not k.startswith("mammo")), key=lambda k: results[k]["jobs_per_s"])
    return {
        "benchmark": "queue",
        "jobs": n,
        "durability": "WAL, synchronous=FULL, one commit per enqueue/claim/ack",
        "results": results,
        "best_peer": best_name,
        "ratio_ours_to_best_peer": round(ours / results[best_name]["jobs_per_s"], 3),
        "ratio_ours_to_persist_queue": round(ours / peer_ack, 3),
        "claim_p99_ms": results["mammo JobQueue"]["claim_ack_p99_ms"],
    }


# --- soak: SIGKILL cycles ---------------------------------------------------

def _soak_worker(db_path: str, lease_s: float) -> None:
    """Child process: claim, store the result in the ack transaction, repeat until killed."""
    db = open_database(db_path, migrate=False)
    q = JobQueue(db, RetryPolicy(max_attempts=10_000))
    job = None
    while True:
        if job is None:
            job = q.claim("soak", worker=f"pid{os.getpid()}", lease_s=lease_s)
            if job is None:
                time.sleep(0.001)
                continue
        effect = lambda d, j=job: d.execute("INSERT INTO soak_results (job_id, pid) VALUES (?, ?)", [j.id, os.getpid()])  # noqa: E731
        job = q.ack_and_claim(job, within=effect, worker=f"pid{os.getpid()}", lease_s=lease_s)


def _seed(q: JobQueue, start: int, count: int) -> None:
    for i in range(start, start + count):
        q.enqueue("soak", {"n": i}, key=f"soak-{i}", max_attempts=10_000)


def run_soak(cycles: int = 1000, *, max_kill_delay_s: float = 0.03, lease_s: float = 0.05, seed: int = 0, home: Path | None = None) -> dict[str, Any]:
    """Kill a real worker process ``cycles`` times at random moments; count lost and duplicated jobs."""
    rng = random.Random(seed)
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="mammo-soak-", dir=home) as tmp:
        path = str(Path(tmp) / "soak.sqlite3")
        db = open_database(path)
        db.execute("CREATE TABLE soak_results (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, pid INTEGER NOT NULL)")
        q = JobQueue(db)
        seeded = 0
        killed_mid_job = 0
        t0 = time.perf_counter()
        for _ in range(cycles):
            if q.stats().get("soak") is None or q.stats()["soak"].ready < 100:
                _seed(q, seeded, 500)
                seeded += 500
            proc = ctx.Process(target=_soak_worker, args=(path, lease_s), daemon=True)
            proc.start()
            time.sleep(rng.uniform(0, max_kill_delay_s))
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            if db.execute("SELECT count(*) FROM jobs WHERE queue='soak' AND state='leased'").fetchone()[0]:
                killed_mid_job += 1
        # Drain with an unkilled worker: expired leases are claimed again.
        time.sleep(lease_s * 2)
        proc = ctx.Process(target=_soak_worker, args=(path, 60.0), daemon=True)
        proc.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            open_jobs = db.execute("SELECT count(*) FROM jobs WHERE queue='soak' AND state IN ('ready','leased')").fetchone()[0]
            if open_jobs == 0:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        row = db.execute(
            "SELECT"
            " (SELECT count(*) FROM jobs WHERE queue='soak'),"
            " (SELECT count(*) FROM jobs WHERE queue='soak' AND state='done'),"
            " (SELECT count(*) FROM jobs WHERE queue='soak' AND state='dead'),"
            " (SELECT count(*) FROM jobs j WHERE queue='soak' AND NOT EXISTS (SELECT 1 FROM soak_results r WHERE r.job_id = j.id)),"
            " (SELECT count(*) FROM (SELECT job_id FROM soak_results GROUP BY job_id HAVING count(*) > 1)),"
            " (SELECT max(attempts) FROM jobs WHERE queue='soak')"
        ).fetchone()
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        db.conn.close()
    return {
        "benchmark": "queue-soak",
        "sigkill_cycles": cycles,
        "killed_while_holding_a_lease": killed_mid_job,
        "jobs_enqueued": seeded,
        "jobs_in_queue": row[0],
        "jobs_done": row[1],
        "jobs_dead": row[2],
        "lost": seeded - row[0] + row[3],
        "duplicated": row[4],
        "max_attempts_seen": row[5],
        "integrity_check": integrity,
        "seconds": round(time.perf_counter() - t0, 1),
    }
