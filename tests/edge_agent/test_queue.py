from pathlib import Path

import pytest

from edge_agent.errors import LeaseLost
from edge_agent.queue import PRIORITY_URGENT, EnqueueResult, JobQueue, RetryPolicy, retry_delay
from edge_agent.store import open_database


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "file"])
def db(request, tmp_path: Path):
    d = open_database(":memory:" if request.param == "memory" else tmp_path / "q.sqlite3")
    yield d
    d.conn.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def q(db, clock) -> JobQueue:
    return JobQueue(db, RetryPolicy(max_attempts=3, backoff_base_s=2, backoff_cap_s=10), clock=clock, rand=lambda: 0.5)


def test_resent_item_is_not_queued_twice(q):
    first = q.enqueue("ingest", {"sop": "1.2.3"}, key="1.2.3")
    again = q.enqueue("ingest", {"sop": "1.2.3"}, key="1.2.3")
    assert first.created and not again.created and again.job_id == first.job_id
    assert q.stats()["ingest"].ready == 1
    # The same key in another queue is a different job.
    assert q.enqueue("infer", {"sop": "1.2.3"}, key="1.2.3").created


def test_urgent_study_goes_first_then_arrival_order(q):
    a = q.enqueue("infer", {"n": "a"}).job_id
    b = q.enqueue("infer", {"n": "b"}).job_id
    urgent = q.enqueue("infer", {"n": "u"}, priority=PRIORITY_URGENT).job_id
    order = [q.claim("infer").id for _ in range(3)]
    assert order == [urgent, a, b]
    assert q.claim("infer") is None


def test_queues_are_separate(q):
    q.enqueue("report", {"x": 1})
    assert q.claim("infer") is None
    assert q.claim("report").payload == {"x": 1}


def test_expired_lease_is_claimed_again_and_late_ack_is_refused(q, clock):
    q.enqueue("infer", {"s": 1})
    first = q.claim("infer", worker="w1", lease_s=30)
    assert q.claim("infer", worker="w2") is None  # still leased
    clock.now += 31
    second = q.claim("infer", worker="w2", lease_s=30)
    assert second.id == first.id and second.attempts == 2
    with pytest.raises(LeaseLost):
        q.ack(first)
    q.ack(second)
    assert q.get_state(first.id) == "done"


def test_ack_effect_is_atomic_with_completion(q, db):
    db.execute("CREATE TABLE results (job_id INTEGER)")
    q.enqueue("infer", {"s": 1})
    job = q.claim("infer")

    def broken_effect(d):
        d.execute("INSERT INTO results VALUES (?)", [job.id])
        raise RuntimeError("disk hiccup")

    with pytest.raises(RuntimeError):
        q.ack(job, within=broken_effect)
    assert db.execute("SELECT count(*) FROM results").fetchone()[0] == 0
    assert q.get_state(job.id) == "leased"  # not completed, will be retried
    q.ack(job, within=lambda d: d.execute("INSERT INTO results VALUES (?)", [job.id]))
    assert db.execute("SELECT count(*) FROM results").fetchone()[0] == 1


def test_retry_backoff_then_dead_letter_with_last_error_then_requeue(q, clock):
    jid = q.enqueue("outbox", {"u": 1}).job_id
    job = q.claim("outbox")
    assert q.fail(job, "coordinator unreachable") == "ready"
    assert q.claim("outbox") is None  # backing off: 2 s * 2^0, half fixed + half jitter(0.5) = 1.5 s
    clock.now += 1.6
    job = q.claim("outbox")
    assert job.attempts == 2
    q.fail(job, "timeout")
    clock.now += 3.1
    job = q.claim("outbox")
    assert q.fail(job, "TLS handshake failed") == "dead"
    dead = q.dead_letters("outbox")
    assert [(d.id, d.attempts, d.last_error) for d in dead] == [(jid, 3, "TLS handshake failed")]
    assert q.stats()["outbox"].dead == 1
    assert q.requeue_dead("outbox") == 1
    job = q.claim("outbox")
    assert job.id == jid and job.attempts == 1


def test_job_whose_worker_keeps_dying_is_dead_lettered(q, clock):
    jid = q.enqueue("infer", {"poison": True}).job_id
    for _ in range(3):
        assert q.claim("infer", lease_s=5) is not None
        clock.now += 6  # the worker died: the lease just expires
    assert q.claim("infer") is None
    assert q.get_state(jid) == "dead"
    assert "lease expired" in q.dead_letters()[0].last_error


def test_release_does_not_spend_an_attempt(q):
    q.enqueue("infer", {})
    job = q.claim("infer")
    q.release(job)
    again = q.claim("infer")
    assert again.attempts == 1


def test_extend_keeps_a_long_job_leased(q, clock):
    q.enqueue("infer", {})
    job = q.claim("infer", lease_s=10)
    clock.now += 8
    q.extend(job, 10)
    clock.now += 8
    assert q.claim("infer") is None
    q.ack(job)


def test_retry_delay_is_exponential_capped_and_jittered():
    p = RetryPolicy(backoff_base_s=2, backoff_cap_s=60)
    assert [retry_delay(n, p, 0.0) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert [retry_delay(n, p, 1.0) for n in (1, 2, 3)] == [2, 4, 8]
    assert retry_delay(20, p, 0.99) <= 60
    assert retry_delay(20, p, 0.0) == 30


def test_stats_report_oldest_waiting_age(q, clock):
    q.enqueue("notify", {})
    clock.now += 42
    s = q.stats()["notify"]
    assert (s.ready, s.leased, s.done, s.dead) == (1, 0, 0, 0)
    assert s.oldest_ready_age_s == pytest.approx(42)


def test_ack_and_claim_completes_one_and_leases_the_next_atomically(q, db):
    db.execute("CREATE TABLE results (job_id INTEGER)")
    first = q.enqueue("infer", {"n": 1}).job_id
    second = q.enqueue("infer", {"n": 2}).job_id
    job = q.claim("infer")
    nxt = q.ack_and_claim(job, within=lambda d: d.execute("INSERT INTO results VALUES (?)", [job.id]))
    assert (q.get_state(first), nxt.id, q.get_state(second)) == ("done", second, "leased")
    with pytest.raises(LeaseLost):  # acking twice is refused and claims nothing
        q.ack_and_claim(job)
    assert q.ack_and_claim(nxt) is None
    assert [r[0] for r in db.execute("SELECT job_id FROM results")] == [first]


def test_worker_drains_the_queue_and_stores_each_result_once(db):
    from edge_agent.worker import Worker

    db.execute("CREATE TABLE results (job_id INTEGER)")
    q = JobQueue(db)
    for i in range(7):
        q.enqueue("infer", {"n": i})
    q.enqueue("infer", {"n": "poison"}, max_attempts=1)

    def handler(job):
        if job.payload["n"] == "poison":
            raise ValueError("cannot decode this study")
        return lambda d: d.execute("INSERT INTO results VALUES (?)", [job.id])

    counters = Worker(q, "infer", handler).run(drain=True)
    assert (counters.done, counters.failed) == (7, 1)
    assert db.execute("SELECT count(DISTINCT job_id), count(*) FROM results").fetchone() == (7, 7)
    assert q.dead_letters("infer")[0].last_error == "ValueError: cannot decode this study"


def test_backoff_setting_describes_the_jitter_the_queue_applies():
    """Docs and code agree: equal jitter, so a retry waits at least half the ceiling and never fires at once."""
    import dataclasses

    from edge_agent.settings import Settings

    help_text = {f.name: f.metadata["help"] for f in dataclasses.fields(Settings)}["queue_backoff_base_s"]
    p = RetryPolicy(backoff_base_s=4, backoff_cap_s=600)
    lowest, highest = retry_delay(1, p, 0.0), retry_delay(1, p, 0.999999)
    assert "equal jitter" in help_text.lower() and "full jitter" not in help_text.lower()
    assert lowest == p.backoff_base_s / 2 and highest <= p.backoff_base_s


def test_a_database_from_the_first_queue_schema_keeps_its_jobs_after_the_upgrade(tmp_path: Path):
    """Migration 2 moves the open-jobs index onto closed_at: done and dead jobs stay closed, ready ones are claimed."""
    import sqlite3

    from edge_agent.schema import MIGRATIONS
    from edge_agent.store import APPLICATION_ID, _statements

    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("CREATE TABLE schema_migrations (component TEXT NOT NULL, version INTEGER NOT NULL, applied_at REAL NOT NULL,"
                 " PRIMARY KEY (component, version))")
    for statement in _statements(MIGRATIONS["queue"][0]):
        conn.execute(statement)
    conn.execute("INSERT INTO schema_migrations VALUES ('queue', 1, 0)")
    for n, state in enumerate(("done", "dead", "ready")):
        conn.execute("INSERT INTO jobs (queue, payload, state, max_attempts, available_at, created_at, updated_at, done_at)"
                     " VALUES ('infer', ?, ?, 5, 0, 0, 7, ?)", [f'{{"n": {n}}}', state, 7 if state == "done" else None])
    conn.close()
    db = open_database(path)
    assert db.execute("SELECT state, closed_at FROM jobs ORDER BY id").fetchall() == [("done", 7), ("dead", 7), ("ready", None)]
    q = JobQueue(db)
    assert q.claim("infer").payload == {"n": 2}
    assert q.claim("infer") is None
    assert q.requeue_dead("infer") == 1
    assert q.claim("infer").payload == {"n": 1}
    db.conn.close()


def _old_queue_schema(path: Path, versions: int):
    """A box database holding only the first ``versions`` queue migrations, as an older release left it."""
    import sqlite3

    from edge_agent.schema import MIGRATIONS
    from edge_agent.store import APPLICATION_ID, _statements

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("CREATE TABLE schema_migrations (component TEXT NOT NULL, version INTEGER NOT NULL, applied_at REAL NOT NULL,"
                 " PRIMARY KEY (component, version))")
    for version in range(1, versions + 1):
        for statement in _statements(MIGRATIONS["queue"][version - 1]):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES ('queue', ?, 0)", [version])
    return conn


def _program(conn, sql: str) -> list[str]:
    import re

    params = max((int(n) for n in re.findall(r"\?(\d+)", sql)), default=sql.count("?"))
    return [row[1] for row in conn.execute("EXPLAIN " + sql, [None] * params).fetchall()]


def test_queue_statements_build_no_throwaway_table_per_run(tmp_path: Path):
    """The state CHECK as an IN list made SQLite build an ephemeral index on every insert and update (a fifth of the CPU)."""
    from edge_agent import queue as queue_module

    hot = [queue_module._ENQUEUE, queue_module._DUE, queue_module._LEASE, queue_module._ACK, queue_module._BURY]
    old = _old_queue_schema(tmp_path / "v2.sqlite3", 2)
    assert any("OpenEphemeral" in _program(old, sql) for sql in hot)  # what migration 3 fixes
    old.close()
    db = open_database(tmp_path / "v2.sqlite3")
    assert [sql for sql in hot if "OpenEphemeral" in _program(db.conn, sql)] == []
    with pytest.raises(Exception, match="CHECK"):  # the constraint itself still holds
        db.execute("INSERT INTO jobs (queue, payload, state, max_attempts, available_at, created_at, updated_at)"
                   " VALUES ('infer', '{}', 'lost', 5, 0, 0, 0)")
    db.conn.close()


def test_the_table_rebuild_keeps_ids_keys_leases_and_states(tmp_path: Path):
    """Migration 3 rebuilds the jobs table: every job keeps its id, key, lease and state; a done key still refuses a re-enqueue."""
    path = tmp_path / "v2.sqlite3"
    conn = _old_queue_schema(path, 2)
    rows = [
        (4, "k-done", "done", None, 7.0, 7.0), (9, "k-dead", "dead", None, None, 7.0),
        (11, "k-leased", "leased", "tok", None, None), (12, None, "ready", None, None, None),
    ]
    for job_id, key, state, token, done_at, closed_at in rows:
        conn.execute("INSERT INTO jobs (id, queue, key, payload, state, attempts, max_attempts, available_at, lease_token, leased_by,"
                     " lease_expires_at, created_at, updated_at, done_at, closed_at)"
                     " VALUES (?, 'infer', ?, ?, ?, 1, 5, 0, ?, 'w1', 10.0, 0, 7, ?, ?)",
                     [job_id, key, f'{{"n": {job_id}}}', state, token, done_at, closed_at])
    conn.close()
    db = open_database(path)
    assert db.execute("SELECT id, key, state, lease_token, done_at, closed_at FROM jobs ORDER BY id").fetchall() == [
        (r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows
    ]
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'jobs' AND type = 'index'")} == {
        "jobs_idempotency", "jobs_open", "jobs_dead"}
    clock = Clock()
    clock.now = 5.0  # the leased job's lease runs to t=10
    q = JobQueue(db, clock=clock)
    assert q.enqueue("infer", {"again": True}, key="k-done") == EnqueueResult(4, False)  # done, but its key still counts
    assert q.claim("infer").id == 12
    assert q.claim("infer") is None
    clock.now = 11.0
    again = q.claim("infer")
    assert (again.id, again.attempts, again.key) == (11, 2, "k-leased")
    assert q.enqueue("infer", {"n": 13}).job_id == 13
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.conn.close()


def test_a_claimed_job_is_a_plain_job_and_any_stored_json_decodes(q, db):
    from edge_agent.queue import Job

    q.enqueue("infer", {"b": [1, 2], "a": "x"})
    job = q.claim("infer")
    assert job == Job(job.id, "infer", {"a": "x", "b": [1, 2]}, None, 0, 1, 3, job.lease_token, job.created_at)
    # Rows written by other code: spaces, a value that is not an object, trailing space.
    for text, value in (('{"a": 1, "b": [1, 2]}', {"a": 1, "b": [1, 2]}), ("[1, 2] ", [1, 2]), (' "s"', "s")):
        db.execute("INSERT INTO jobs (queue, payload, state, max_attempts, available_at, created_at, updated_at)"
                   " VALUES ('odd', ?, 'ready', 3, 0, 0, 0)", [text])
        assert q.claim("odd").payload == value


def test_bench_reports_ours_without_and_with_keys_beside_the_peers():
    from edge_agent.bench.queue import OURS, run_bench, summary

    out = run_bench(40, rounds=2, slice_jobs=15)
    assert out["ours_keyed"]["jobs_per_s"] > 0 and out["results"][OURS]["jobs_per_s"] == out["ours_jobs_per_s"]
    assert "without idempotency keys" in out["headline"]
    assert "with a key per job" in summary(out)
    assert out["results"][OURS]["jobs_per_s"] == max(out["results"][OURS]["jobs_per_s_rounds"])
    # The headline ratio is taken within each round (the stores ran interleaved), then the median of the rounds.
    assert len(out["ratio_ours_to_best_peer_rounds"]) == 2
    assert out["ratio_ours_to_best_peer"] == round(sum(out["ratio_ours_to_best_peer_rounds"]) / 2, 3)


def test_bench_reads_back_what_each_store_makes_durable_per_job():
    """Same durability on both sides is shown, not assumed: WAL, synchronous FULL, commits counted per job."""
    from edge_agent.bench.queue import HUEY, OURS, OURS_KEYED, PERSIST_QUEUE, run_bench, summary

    out = run_bench(30, rounds=1, slice_jobs=10)
    d = out["durability_per_store"]
    for name in (OURS, OURS_KEYED, HUEY):
        assert (d[name]["journal_mode"], d[name]["synchronous"]) == ("wal", "FULL")
        assert d[name]["commits_per_enqueue"] == 1.0
        assert d[name]["commits_per_claim_ack"] == pytest.approx(1.0, abs=0.04)  # ours: plus the first claim alone
        assert d[name]["wal_fsyncs_per_job"] == pytest.approx(2.0, abs=0.04)
    assert d[PERSIST_QUEUE]["commits_per_claim_ack"] == 2.0  # get() commits, then ack() commits: the count sees it
    assert f"WAL fsyncs/job {d[HUEY]['wal_fsyncs_per_job']}" in summary(out)


def test_every_store_in_the_bench_hands_back_the_job_it_read(tmp_path: Path):
    """Like for like: a worker must read its job. huey's dequeue gives raw bytes, so the bench decodes them as ours does."""
    from edge_agent.bench.queue import PAYLOAD, STORES

    for k, (name, open_store) in enumerate(STORES.items()):
        (tmp_path / str(k)).mkdir()
        store = open_store(tmp_path / str(k))
        store.put(7)
        assert store.claim_ack() == {**PAYLOAD, "i": 7}, name
        store.close()


def test_payload_encoding_is_compact_sorted_ascii_json_and_refuses_what_json_cannot_hold():
    from edge_agent.queue import _encode, _encoder

    for value in ({"b": [1, 2.5, None, True], "a": "çğ\n\"", "n": {"z": 1, "y": [{}]}}, [1, 2], "s", 3, {1: "k"}, {}):
        assert _encode(value) == _encoder.encode(value)
    assert _encode({"b": 1, "a": "ş"}) == '{"a":"\\u015f","b":1}'
    with pytest.raises(TypeError, match="not JSON serializable"):
        _encode({"x": {1, 2}})
    assert _encode({"after": "an error"}) == '{"after":"an error"}'  # no state left behind by the failure
