"""``mammo bench queue``: our durable queue against persist-queue and huey, same workload, same run.

Workload: enqueue N small jobs (one commit each), then claim, read and ack
them one at a time, as the shipped worker does (the ack of one job and the
claim of the next share a commit; the peers have no such call).  Every store
runs in WAL mode with synchronous=FULL (one WAL fsync per commit), which is
how the box ships.  huey's storage has no acknowledgement (dequeue deletes
the row), so it does less work per job than a crash-safe queue must.  What
each side fsyncs per job is not assumed: the journal mode and synchronous
level are read back from each store's own connection, and its commits per
job are counted from the statements it runs (SQLite's trace) in a short
separate pass, so the JSON shows it beside the speed.

Fair in both directions: every store gets the same payload (a dict, encoded
to JSON by us and by huey; pickled by persist-queue, as it must), and every
worker reads the job it took: ours and persist-queue return the decoded
payload, so huey's raw bytes are decoded too (a worker cannot run a job it
has not read; before this the huey loop skipped that step).

Ours runs two workloads.  The headline one enqueues without an idempotency
key: the work the peers do (they have no keys), plus the ack.  The other
gives every job a key, as the box enqueues studies; the key's unique index
is one more page written per enqueue, and its figure is printed beside the
headline.

Noise: the box is shared, and another process's fsync stalls ours for
milliseconds.  So the stores do not run one after another; within a round
they take turns in slices of a few hundred jobs (the first store rotating
each slice), so a burst of load lands on all of them alike, and the ratio
is taken within each round, between stores that ran interleaved.  The
headline ratio is the median of the per-round ratios (every round's ratio
beside it); each store's jobs/s is its fastest round (other load only ever
slows a round down), with the median round beside it.  The CPU time per job
is printed too: it does not depend on the disk, and shows how much of a
difference is work rather than waiting.

The soak mode starts a real worker process, waits until it says it holds a
lease, SIGKILLs it at a random moment after that, restarts it, and afterwards
counts jobs lost and jobs completed twice, and how many kills hit a lease
(the killed worker's own lease still open in the database).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import sqlite_utils

from edge_agent.bench import percentile
from edge_agent.queue import Job, JobQueue, RetryPolicy
from edge_agent.store import open_database

PAYLOAD = {"study": "1.2.826.0.1.3680043.8.498.1", "views": 4}
OURS = "mammo JobQueue"
OURS_KEYED = "mammo JobQueue, key per job"
PERSIST_QUEUE = "persist-queue SQLiteAckQueue"
HUEY = "huey SqliteStorage (no ack)"
SLICE_JOBS = 250
TRACE_JOBS = 200


@dataclass
class Store:
    """One queue under test: enqueue job ``i``; claim, read and ack one job (its payload, None when empty); its SQLite connection; close."""

    put: Callable[[int], object]
    claim_ack: Callable[[], Any]
    conn: sqlite3.Connection
    close: Callable[[], object]


def open_ours(root: Path, *, keyed: bool = False) -> Store:
    db = open_database(root / "mammo.sqlite3")
    q = JobQueue(db)
    held: list[Job] = []

    def claim_ack() -> Any:
        # As the shipped Worker runs: the ack of one job and the claim of the next share a commit.
        job = held.pop() if held else q.claim("infer", worker="bench", lease_s=60)
        if job is None:
            return None
        nxt = q.ack_and_claim(job, worker="bench", lease_s=60)
        if nxt is not None:
            held.append(nxt)
        return job.payload

    if keyed:
        put: Callable[[int], object] = lambda i: q.enqueue("infer", {**PAYLOAD, "i": i}, key=f"k{i}")  # noqa: E731
    else:
        put = lambda i: q.enqueue("infer", {**PAYLOAD, "i": i})  # noqa: E731
    return Store(put, claim_ack, db.conn, db.conn.close)


def open_ours_keyed(root: Path) -> Store:
    return open_ours(root, keyed=True)


def open_persist_queue(root: Path) -> Store:
    from persistqueue import SQLiteAckQueue

    q = SQLiteAckQueue(str(root / "persistqueue"), auto_commit=True)
    q._conn.execute("PRAGMA synchronous=FULL")

    def claim_ack() -> Any:
        item = q.get(block=False)  # unpickled: the worker has read it
        q.ack(item)
        return item

    return Store(lambda i: q.put({**PAYLOAD, "i": i}), claim_ack, q._conn, q.close)


def open_huey(root: Path) -> Store:
    from huey.storage import SqliteStorage

    s = SqliteStorage(name="infer", filename=str(root / "huey.sqlite3"), fsync=True, journal_mode="wal")

    def claim_ack() -> Any:
        data = s.dequeue()
        return None if data is None else json.loads(data)  # read the job, as ours and persist-queue hand it back decoded

    return Store(lambda i: s.enqueue(json.dumps({**PAYLOAD, "i": i}).encode()), claim_ack, s.conn, s.close)


STORES: dict[str, Callable[[Path], Store]] = {
    OURS: open_ours, OURS_KEYED: open_ours_keyed, PERSIST_QUEUE: open_persist_queue, HUEY: open_huey,
}
PEERS = (PERSIST_QUEUE, HUEY)


@dataclass
class _Tally:
    enqueue_s: float = 0.0
    claim_s: float = 0.0
    cpu_s: float = 0.0
    claims: list[float] = field(default_factory=list)


def _turn(name: str, store: Store, tally: _Tally, phase: str, start: int, stop: int) -> None:
    c0, t0 = time.process_time(), time.perf_counter()
    if phase == "enqueue":
        for i in range(start, stop):
            store.put(i)
        tally.enqueue_s += time.perf_counter() - t0
    else:
        claims = tally.claims
        for _ in range(start, stop):
            s = time.perf_counter()
            if store.claim_ack() is None:
                raise RuntimeError(f"{name}: queue ran dry before {stop} jobs")
            claims.append(time.perf_counter() - s)
        tally.claim_s += time.perf_counter() - t0
    tally.cpu_s += time.process_time() - c0


def run_round(root: Path, n: int, names: list[str], *, slice_jobs: int = SLICE_JOBS) -> dict[str, dict[str, Any]]:
    """Every store enqueues n jobs, then drains them; the stores take turns slice by slice, the first one rotating."""
    stores = {}
    for k, name in enumerate(names):
        (root / str(k)).mkdir()
        stores[name] = STORES[name](root / str(k))
    tallies = {name: _Tally() for name in names}
    try:
        for phase in ("enqueue", "claim"):
            for k, start in enumerate(range(0, n, slice_jobs)):
                for name in names[k % len(names):] + names[: k % len(names)]:
                    _turn(name, stores[name], tallies[name], phase, start, min(n, start + slice_jobs))
    finally:
        for store in stores.values():
            store.close()
    return {
        name: {
            "jobs_per_s": round(n / (t.enqueue_s + t.claim_s), 1),
            "enqueue_per_s": round(n / t.enqueue_s, 1),
            "claim_ack_per_s": round(n / t.claim_s, 1),
            "claim_ack_p50_ms": round(percentile(t.claims, 50) * 1000, 3),
            "claim_ack_p99_ms": round(percentile(t.claims, 99) * 1000, 3),
            "cpu_us_per_job": round(t.cpu_s / n * 1e6, 1),
        }
        for name, t in tallies.items()
    }


def durability(root: Path, name: str, n: int = TRACE_JOBS) -> dict[str, Any]:
    """What one store makes durable per job, read from its own connection: journal mode, synchronous, commits per job.

    Commits are counted from the statements the store runs (SQLite's trace): a COMMIT, or a write
    statement run outside a transaction (it commits by itself).  In WAL mode with synchronous FULL or
    EXTRA, SQLite fsyncs the WAL once per commit; checkpoints (every ~1000 WAL pages) add the same
    few fsyncs for every store and are not counted here.
    """
    store = STORES[name](root)
    conn = store.conn
    counts = {"enqueue": 0, "claim": 0}
    phase = "enqueue"

    def traced(sql: str) -> None:
        head = sql.lstrip()[:7].upper()
        if head.startswith(("COMMIT", "END")) or (head.startswith(("INSERT", "UPDATE", "DELETE", "REPLACE")) and not conn.in_transaction):
            counts[phase] += 1

    try:
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        sync = int(conn.execute("PRAGMA synchronous").fetchone()[0])
        conn.set_trace_callback(traced)
        for i in range(n):
            store.put(i)
        phase = "claim"
        for _ in range(n):
            store.claim_ack()
        conn.set_trace_callback(None)
    finally:
        store.close()
    commits = (counts["enqueue"] + counts["claim"]) / n
    fsync_per_commit = 1 if mode == "wal" and sync >= 2 else None
    return {
        "journal_mode": mode,
        "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, str(sync)),
        "commits_per_job": round(commits, 2),
        "commits_per_enqueue": round(counts["enqueue"] / n, 2),
        "commits_per_claim_ack": round(counts["claim"] / n, 2),
        "wal_fsyncs_per_job": None if fsync_per_commit is None else round(commits * fsync_per_commit, 2),
    }


def fastest_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the most jobs/s, with the median round's jobs/s (lower middle for an even count) and every round's beside it."""
    ranked = sorted(rounds, key=lambda r: r["jobs_per_s"])
    return {**ranked[-1], "jobs_per_s_median": ranked[(len(ranked) - 1) // 2]["jobs_per_s"],
            "jobs_per_s_rounds": [r["jobs_per_s"] for r in rounds]}


def run_bench(n: int = 2000, rounds: int = 3, *, slice_jobs: int = SLICE_JOBS) -> dict[str, Any]:
    names = list(STORES)
    per_round: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="mammo-bench-queue-") as tmp:
        for r in range(rounds):
            root = Path(tmp) / f"round{r}"
            root.mkdir()
            order = names[r % len(names):] + names[: r % len(names)]  # a different store leads each round
            per_round.append(run_round(root, n, order, slice_jobs=slice_jobs))
        durable = {}
        for k, name in enumerate(names):
            (Path(tmp) / f"trace{k}").mkdir()
            durable[name] = durability(Path(tmp) / f"trace{k}", name, min(n, TRACE_JOBS))
    results = {name: fastest_round([r[name] for r in per_round]) for name in names}
    keyed = results.pop(OURS_KEYED)  # ours (no key) and the peers: like for like
    best = max(PEERS, key=lambda k: results[k]["jobs_per_s_median"])

    def ratios(name: str, peer: str) -> list[float]:
        return [round(r[name]["jobs_per_s"] / r[peer]["jobs_per_s"], 3) for r in per_round]

    ours_rounds, keyed_rounds = ratios(OURS, best), ratios(OURS_KEYED, best)
    return {
        "benchmark": "queue",
        "jobs": n,
        "rounds": rounds,
        "slice_jobs": slice_jobs,
        "durability": "WAL, synchronous=FULL, one commit per enqueue and per claim+ack (see durability_per_store, read back)",
        "durability_per_store": durable,
        "statistic": (f"stores interleaved in slices of {slice_jobs} jobs within each round; ratio: median of the per-round "
                      "ratios; jobs/s: each store's fastest round (median and all rounds beside it)"),
        "headline": (f"{OURS} without idempotency keys (the peers have none) against the best peer; "
                     f"with a key per job, as the box enqueues studies, see ours_keyed"),
        "results": results,
        "ours_keyed": keyed,
        "ours_jobs_per_s": results[OURS]["jobs_per_s"],
        "best_peer": best,
        "best_peer_jobs_per_s": results[best]["jobs_per_s"],
        "ratio_ours_to_best_peer": round(statistics.median(ours_rounds), 3),
        "ratio_ours_to_best_peer_rounds": ours_rounds,
        "ratio_ours_keyed_to_best_peer": round(statistics.median(keyed_rounds), 3),
        "ratio_ours_keyed_to_best_peer_rounds": keyed_rounds,
        "ratio_ours_to_best_peer_fastest_rounds": round(results[OURS]["jobs_per_s"] / results[best]["jobs_per_s"], 3),
        "ratio_ours_to_persist_queue": round(statistics.median(ratios(OURS, PERSIST_QUEUE)), 3),
        "cpu_efficiency_ours_to_best_peer": round(results[best]["cpu_us_per_job"] / results[OURS]["cpu_us_per_job"], 3),
        "claim_p99_ms": results[OURS]["claim_ack_p99_ms"],
    }


# --- soak: SIGKILL cycles ---------------------------------------------------

LEASE_HELD = b"L"


def _soak_worker(db_path: str, lease_s: float, tell: Connection | None) -> None:
    """Child process: claim, say once that it holds a lease, store each result in the ack transaction, repeat until killed."""
    db = open_database(db_path, migrate=False)
    q = JobQueue(db, RetryPolicy(max_attempts=10_000))
    me = worker_name(os.getpid())
    job = None
    while True:
        if job is None:
            job = q.claim("soak", worker=me, lease_s=lease_s)
            if job is None:
                time.sleep(0.001)
                continue
        if tell is not None:
            tell.send_bytes(LEASE_HELD)  # the lease is committed: the parent may kill from now on
            tell.close()
            tell = None
        effect = lambda d, j=job: d.execute("INSERT INTO soak_results (job_id, pid) VALUES (?, ?)", [j.id, os.getpid()])  # noqa: E731
        job = q.ack_and_claim(job, within=effect, worker=me, lease_s=lease_s)


def worker_name(pid: int) -> str:
    return f"pid{pid}"


def leases_held_by(db: sqlite_utils.Database, worker: str) -> int:
    """Open leases of one worker: after its SIGKILL, whether the kill hit a lease (leases of earlier kills do not count)."""
    return int(db.execute("SELECT count(*) FROM jobs WHERE queue = 'soak' AND state = 'leased' AND leased_by = ?", [worker]).fetchone()[0])


def _seed(q: JobQueue, start: int, count: int) -> None:
    for i in range(start, start + count):
        q.enqueue("soak", {"n": i}, key=f"soak-{i}", max_attempts=10_000)


def run_soak(cycles: int = 1000, *, max_kill_delay_s: float = 0.03, lease_s: float = 0.05, seed: int = 0, home: Path | None = None) -> dict[str, Any]:
    """Kill a real worker process ``cycles`` times at random moments after it took a lease; count lost and duplicated jobs.

    Workers come from a fork server, not from this process: a child forked from a process that holds
    an SQLite connection inherits SQLite's lock bookkeeping without the locks (SQLite's "How To
    Corrupt", section 2.6).
    """
    rng = random.Random(seed)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    with tempfile.TemporaryDirectory(prefix="mammo-soak-", dir=home) as tmp:
        path = str(Path(tmp) / "soak.sqlite3")
        db = open_database(path)
        db.execute("CREATE TABLE soak_results (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, pid INTEGER NOT NULL)")
        q = JobQueue(db)
        seeded = kills_after_signal = kills_hit_lease = no_signal = 0
        t0 = time.perf_counter()
        for _ in range(cycles):
            stats = q.stats().get("soak")
            if stats is None or stats.ready < 500:  # enough that a worker never runs dry before its kill
                _seed(q, seeded, 1000)
                seeded += 1000
            hear, tell = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_soak_worker, args=(path, lease_s, tell), daemon=True)
            proc.start()
            pid = int(proc.pid or 0)
            tell.close()
            signalled = hear.poll(30)
            hear.close()
            if signalled:
                kills_after_signal += 1
                time.sleep(rng.uniform(0, max_kill_delay_s))
            else:
                no_signal += 1
            os.kill(pid, signal.SIGKILL)
            proc.join()
            kills_hit_lease += leases_held_by(db, worker_name(pid)) > 0
        # Drain with an unkilled worker: expired leases are claimed again.
        time.sleep(lease_s * 2)
        hear, tell = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_soak_worker, args=(path, 60.0, tell), daemon=True)
        proc.start()
        tell.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            open_jobs = db.execute("SELECT count(*) FROM jobs WHERE queue='soak' AND state IN ('ready','leased')").fetchone()[0]
            if open_jobs == 0:
                break
            time.sleep(0.05)
        proc.kill()
        proc.join()
        hear.close()
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
        "kills_after_lease_signal": kills_after_signal,
        "kills_that_hit_a_lease": kills_hit_lease,
        "workers_that_never_signalled": no_signal,
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


def summary(result: dict[str, Any]) -> str:
    """The human lines ``mammo bench queue`` prints."""
    if result["benchmark"] == "queue-soak":
        return (f"SIGKILL cycles: {result['sigkill_cycles']} (after the worker said it held a lease: {result['kills_after_lease_signal']}, "
                f"hit a lease: {result['kills_that_hit_a_lease']}), jobs: {result['jobs_enqueued']}, "
                f"lost: {result['lost']}, duplicated: {result['duplicated']}, integrity: {result['integrity_check']}")
    rows = {**result["results"], OURS_KEYED: result["ours_keyed"]}
    lines = [f"{k:32s} {v['jobs_per_s']:>9.1f} jobs/s  claim+ack p99 {v['claim_ack_p99_ms']:.3f} ms  CPU {v['cpu_us_per_job']:.1f} us/job"
             for k, v in rows.items()]
    lines.append(f"ours / best peer ({result['best_peer']}): {result['ratio_ours_to_best_peer']} without keys "
                 f"(rounds {result['ratio_ours_to_best_peer_rounds']}), {result['ratio_ours_keyed_to_best_peer']} with a key per job "
                 f"(rounds {result['ratio_ours_keyed_to_best_peer_rounds']}); median of {result['rounds']} interleaved rounds; "
                 f"CPU efficiency {result['cpu_efficiency_ours_to_best_peer']}")
    for k, d in result["durability_per_store"].items():
        lines.append(f"{k:32s} {d['journal_mode']}, synchronous={d['synchronous']}, {d['commits_per_job']} commits/job "
                     f"({d['commits_per_enqueue']} enqueue + {d['commits_per_claim_ack']} claim+ack), WAL fsyncs/job {d['wal_fsyncs_per_job']}")
    return "\n".join(lines)
