import hashlib
import sqlite3
import threading
from pathlib import Path

import pytest

from edge_agent.errors import DatabaseRefused, StorageFull
from edge_agent.queue import JobQueue
from edge_agent.schema import MIGRATIONS
from edge_agent.store import APPLICATION_ID, integrity_ok, open_database, transaction


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_new_database_is_wal_full_sync_and_ours(tmp_path: Path):
    db = open_database(tmp_path / "box.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert ("queue", 1) in {tuple(r) for r in db.execute("SELECT component, version FROM schema_migrations")}


def test_reopening_applies_no_migration_twice(tmp_path: Path):
    open_database(tmp_path / "b.sqlite3").conn.close()
    db = open_database(tmp_path / "b.sqlite3")
    assert db.execute("SELECT count(*) FROM schema_migrations WHERE component='queue'").fetchone()[0] == len(MIGRATIONS["queue"])


def test_garbage_file_is_refused_and_left_untouched(tmp_path: Path):
    p = tmp_path / "box.sqlite3"
    p.write_bytes(b"this is a PDF, not a database" * 100)
    before = _sha(p)
    with pytest.raises(DatabaseRefused, match="untouched"):
        open_database(p)
    assert _sha(p) == before


def test_foreign_sqlite_database_is_refused_and_left_untouched(tmp_path: Path):
    p = tmp_path / "box.sqlite3"
    conn = sqlite3.connect(p)
    conn.execute("CREATE TABLE patients (name TEXT)")
    conn.execute("INSERT INTO patients VALUES ('x')")
    conn.commit()
    conn.close()
    before = _sha(p)
    with pytest.raises(DatabaseRefused, match="another application"):
        open_database(p)
    assert _sha(p) == before
    assert not (tmp_path / "box.sqlite3-wal").exists()


def test_corrupted_pages_are_refused(tmp_path: Path):
    p = tmp_path / "box.sqlite3"
    db = open_database(p)
    q = JobQueue(db)
    for i in range(300):
        q.enqueue("infer", {"i": i, "pad": "x" * 200})
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.conn.close()
    data = bytearray(p.read_bytes())
    for off in range(4096 * 2, len(data) - 4096, 4096):
        data[off + 8 : off + 108] = b"\xff" * 100  # scribble over b-tree page headers
    p.write_bytes(bytes(data))
    before = _sha(p)
    with pytest.raises(DatabaseRefused):
        open_database(p)
    assert _sha(p) == before


def test_full_database_gives_clear_error_and_corrupts_nothing(tmp_path: Path):
    p = tmp_path / "box.sqlite3"
    db = open_database(p, max_size_mb=1)
    q = JobQueue(db)
    accepted = 0
    with pytest.raises(StorageFull, match="Fix: free disk space"):
        for i in range(100_000):
            q.enqueue("ingest", {"i": i, "pad": "y" * 500}, key=f"k{i}")
            accepted += 1
    assert accepted > 100
    assert integrity_ok(db)
    assert q.stats()["ingest"].ready == accepted
    db.conn.close()
    db = open_database(p)  # no cap: the box keeps working with all jobs intact
    q = JobQueue(db)
    assert q.enqueue("ingest", {"after": True}).created
    assert q.stats()["ingest"].ready == accepted + 1


def test_threads_sharing_a_connection_never_run_inside_each_others_transaction(tmp_path: Path):
    """A thread's read or bare write waits for another thread's transaction on the same connection to end."""
    db = open_database(tmp_path / "box.sqlite3")
    db.execute("CREATE TABLE notes (who TEXT)")
    in_tx, other_done = threading.Event(), threading.Event()
    seen: list[int] = []

    def first() -> None:
        with pytest.raises(RuntimeError), transaction(db):
            db.execute("INSERT INTO notes VALUES ('first, rolled back')")
            in_tx.set()
            other_done.wait(timeout=1.0)  # the other thread cannot finish while this transaction is open
            raise RuntimeError("roll back")

    def other() -> None:
        in_tx.wait()
        seen.append(db.execute("SELECT count(*) FROM notes").fetchone()[0])
        db.execute("INSERT INTO notes VALUES ('other')")
        other_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [0], "a thread read another thread's uncommitted row"
    assert [r[0] for r in db.execute("SELECT who FROM notes")] == ["other"], "a thread's write was rolled back with another's transaction"
    db.conn.close()
