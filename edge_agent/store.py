"""The box database: the only place that opens SQLite.

One file under ``MAMMO_HOME`` holds queues and records.  It runs in WAL mode
with ``synchronous=FULL`` so a committed transaction survives a power cut.
A file that is not ours (another application's database, or bytes that are
not SQLite at all) is refused before anything is written to it.

Several processes share the file (the daemon, each CLI command), and SQLite
coordinates them with POSIX locks, which belong to the *process*: closing any
descriptor of the file drops every lock the process holds, and another
process that then closes its connection believes it is the last user,
checkpoints and deletes the WAL the first one still writes to (SQLite's "How
To Corrupt An SQLite Database File", section 2.2).  So nothing but SQLite ever
opens the live file: the header check below asks SQLite itself.

Connections: one per component, each opened through :func:`open_database`.
The daemon keeps one for ingest and start-up (``Box.db``), one for the
kiosk and one per inference worker; a CLI command keeps one.  Threads of a
component may share its connection, and take turns on it: a connection
carries a lock (``conn.turn``) that every statement takes and that
:func:`transaction` holds from BEGIN to COMMIT, so no two threads ever use
one connection at once, and no thread runs inside, or reads the uncommitted
rows of, another thread's transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlite_utils

from edge_agent.errors import DatabaseRefused, StorageFull, StoreError
from edge_agent.schema import MIGRATIONS

APPLICATION_ID = 0x4D414D4D  # "MAMM"
BUSY_TIMEOUT_MS = 10_000


class _Cursor(sqlite3.Cursor):
    """Steps its statement only during its connection's turn."""

    connection: _Connection

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        with self.connection.turn:
            return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> _Cursor:
        with self.connection.turn:
            return super().executemany(sql, seq_of_parameters)

    def fetchone(self) -> Any:
        with self.connection.turn:
            return super().fetchone()

    def fetchmany(self, size: int | None = None) -> list[Any]:
        with self.connection.turn:
            return super().fetchmany(self.arraysize if size is None else size)

    def fetchall(self) -> list[Any]:
        with self.connection.turn:
            return super().fetchall()

    def __next__(self) -> Any:
        with self.connection.turn:
            return super().__next__()


class _Connection(sqlite3.Connection):
    """A connection the threads of one component take turns on (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.turn = threading.RLock()

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or _Cursor)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Any:
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, script: str, /) -> Any:
        with self.turn:
            return super().executescript(script)


def open_database(path: Path | str, *, max_size_mb: int = 0, migrate: bool = True) -> sqlite_utils.Database:
    """Open (or create) the box database, refusing anything that is not ours."""
    path = Path(path) if path != ":memory:" else path
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False,
                               factory=_Connection)
    except sqlite3.Error as exc:
        raise StoreError(f"Cannot open database {path}: {exc}. Check the path and its permissions.") from exc
    try:
        _check_ownership(conn, path)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        if max_size_mb:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(1, max_size_mb * 1024 * 1024 // page_size)}")
        db = sqlite_utils.Database(conn)
        if migrate:
            apply_migrations(db)
        return db
    except BaseException:
        conn.close()
        raise


def _check_ownership(conn: sqlite3.Connection, path: object) -> None:
    """Refuse a file that is not SQLite, not ours, or damaged, having only read it (through SQLite, never open())."""
    try:
        conn.execute("PRAGMA schema_version").fetchone()  # reads the header: SQLITE_NOTADB for anything else
    except sqlite3.OperationalError as exc:  # locked, unreadable: nothing wrong with the file itself
        raise translate(exc) from exc
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
            raise DatabaseRefused(
                f"{path} is not an SQLite database (corrupt or a different file). It was left untouched. "
                "Fix: move it aside and restore from backup, or point MAMMO_HOME at another directory."
            ) from exc
        raise DatabaseRefused(f"{path} is corrupt ({exc}). It was left untouched. Fix: restore it from backup.") from exc
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id == 0 and tables == 0:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            return
        if app_id != APPLICATION_ID:
            raise DatabaseRefused(
                f"{path} belongs to another application (application_id {app_id:#x}, {tables} schema objects). "
                "It was left untouched. Fix: point MAMMO_HOME at this box's own data directory."
            )
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise DatabaseRefused(f"{path} is corrupt ({exc}). It was left untouched. Fix: restore it from backup.") from exc
    if check != "ok":
        raise DatabaseRefused(f"{path} failed its integrity check ({check}). It was left untouched. Fix: restore it from backup.")


def apply_migrations(db: sqlite_utils.Database) -> list[tuple[str, int]]:
    """Apply every pending component migration, each in its own transaction."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " component TEXT NOT NULL, version INTEGER NOT NULL, applied_at REAL NOT NULL,"
        " PRIMARY KEY (component, version))"
    )
    done = {(r[0], r[1]) for r in db.execute("SELECT component, version FROM schema_migrations").fetchall()}
    applied = []
    for component, scripts in MIGRATIONS.items():
        for version, script in enumerate(scripts, start=1):
            if (component, version) in done:
                continue
            with transaction(db):
                for statement in _statements(script):
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [component, version, time.time()])
            applied.append((component, version))
    return applied


def _statements(script: str) -> list[str]:
    """Split a migration script on statement boundaries (executescript would commit implicitly)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def turn_of(conn: sqlite3.Connection) -> contextlib.AbstractContextManager[Any]:
    """The lock a thread holds while it uses ``conn`` (a no-op for a connection not opened here)."""
    return getattr(conn, "turn", None) or contextlib.nullcontext()


class transaction:  # noqa: N801 - used as ``with transaction(db) as db:``, like a function
    """One write transaction, during which no other thread may use the connection; translates full-disk errors into StorageFull.

    A class rather than a generator: the queue opens one per job, and this costs a third as much.
    """

    __slots__ = ("db", "immediate", "_turn", "_cur")

    def __init__(self, db: sqlite_utils.Database, *, immediate: bool = True) -> None:
        self.db = db
        self.immediate = immediate
        self._turn = turn_of(db.conn)

    def __enter__(self) -> sqlite_utils.Database:
        self._turn.__enter__()  # this thread's turn on the connection, BEGIN to COMMIT
        try:
            self._cur = sqlite3.Cursor(self.db.conn)  # a plain cursor: the turn is already held
            self._cur.execute("BEGIN IMMEDIATE" if self.immediate else "BEGIN")
        except BaseException as exc:
            self._turn.__exit__(None, None, None)
            if isinstance(exc, sqlite3.Error):
                raise translate(exc) from exc
            raise
        return self.db

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is None:
                try:
                    self._cur.execute("COMMIT")
                    return
                except sqlite3.Error as commit_error:
                    exc = commit_error
            if self.db.conn.in_transaction:
                self._cur.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise translate(exc) from exc
        finally:
            self._turn.__exit__(None, None, None)


def translate(exc: sqlite3.Error) -> Exception:
    """Our error for a SQLite error, with what to do about it."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "database or disk is full" in text:
        return StorageFull(
            "The box database cannot grow (disk full or size limit reached); nothing was written. "
            "Fix: free disk space (purge old exports, `mammo quarantine purge`) or raise db_max_size_mb."
        )
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return StoreError(f"The box database stayed locked: {text}. Another process holds a long transaction; retry shortly.")
    return StoreError(f"Database error: {text}")


def integrity_ok(db: sqlite_utils.Database) -> bool:
    return bool(db.execute("PRAGMA integrity_check").fetchone()[0] == "ok")
