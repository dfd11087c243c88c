"""The sign-in tables: failure counts per typed name and the failed-sign-in token buckets (owned by kiosk_ui).

Every function here runs inside the caller's write transaction
(:func:`edge_agent.store.transaction`, ``BEGIN IMMEDIATE``), so a count is
read and written under one lock: parallel wrong passwords, from threads or
from other processes, each count once.

Failures are counted per *typed* name, whether or not an account has that
name, so a made-up name locks after exactly as many tries as a real one and
the answers never tell which names exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlite_utils

from kiosk_ui import auth, throttle

# Failure counts left idle this long are forgotten, so made-up names do not pile up in the table.
FORGET_FAILURES_AFTER_S = 86400.0
# While a bucket keeps refusing, its refusals reach the audit trail at most once per this many seconds.
NOTE_REFUSALS_EVERY_S = 60.0


def locked_until(db: sqlite_utils.Database, name: str, now: float) -> float | None:
    """When the lock on ``name`` ends, or None when it is not locked."""
    row = db.execute("SELECT locked_until FROM kiosk_signin_lockouts WHERE name = ?", [name]).fetchone()
    return row[0] if row is not None and auth.is_locked(row[0], now) else None


def record_failure(db: sqlite_utils.Database, name: str, now: float, policy: auth.LockoutPolicy) -> float | None:
    """Count one wrong password for ``name`` in SQL; returns the end of the lock when this failure locks the name."""
    failed = db.execute(
        "INSERT INTO kiosk_signin_lockouts (name, failed_count, locked_until, updated_at) VALUES (?, 1, NULL, ?)"
        " ON CONFLICT (name) DO UPDATE SET failed_count = failed_count + 1, updated_at = excluded.updated_at"
        " RETURNING failed_count", [name, now]).fetchone()[0]
    until = auth.lock_after(failed, now, policy)
    if until is not None:
        db.execute("UPDATE kiosk_signin_lockouts SET failed_count = 0, locked_until = ? WHERE name = ?", [until, name])
    db.execute("DELETE FROM kiosk_signin_lockouts WHERE updated_at < ? AND (locked_until IS NULL OR locked_until < ?)",
               [now - FORGET_FAILURES_AFTER_S, now])
    return until


def failure_count(db: sqlite_utils.Database, name: str) -> int:
    row = db.execute("SELECT failed_count FROM kiosk_signin_lockouts WHERE name = ?", [name]).fetchone()
    return int(row[0]) if row else 0


def forget_failures(db: sqlite_utils.Database, name: str) -> int:
    """A right password, a new password or an admin's unlock: the name starts afresh."""
    return db.execute("DELETE FROM kiosk_signin_lockouts WHERE name = ?", [name]).rowcount


@dataclass(frozen=True)
class Refusal:
    retry_after_s: float
    noted: tuple[str, ...]  # refusing keys whose refusal should be written to the audit trail now


def reserve(db: sqlite_utils.Database, keys: Sequence[tuple[str, throttle.RatePolicy]], now: float, *,
            refill_all_s: float) -> Refusal | None:
    """Take one token from every bucket in ``keys``; None when all had one, else a Refusal and nothing taken.

    ``refill_all_s`` is the longest any bucket takes to fill up from empty: rows older than that are full and are
    deleted.
    """
    if not keys:
        return None
    rows = {r[0]: (throttle.Bucket(r[1], r[2]), r[3]) for r in db.execute(
        f"SELECT key, tokens, at, refused_noted_at FROM kiosk_signin_buckets WHERE key IN ({','.join('?' * len(keys))})",
        [k for k, _ in keys]).fetchall()}
    taken: list[tuple[str, throttle.Bucket]] = []
    wait, refusing = 0.0, []
    for key, policy in keys:
        bucket, noted_at = rows.get(key, (None, None))
        after, w = throttle.take(bucket, now, policy)
        if after is None:
            wait = max(wait, w)
            refusing.append((key, noted_at))
        else:
            taken.append((key, after))
    if refusing:
        noted = tuple(k for k, at in refusing if at is None or now - at >= NOTE_REFUSALS_EVERY_S)
        for key in noted:
            db.execute("UPDATE kiosk_signin_buckets SET refused_noted_at = ? WHERE key = ?", [now, key])
        return Refusal(wait, noted)
    _write(db, taken)
    db.execute("DELETE FROM kiosk_signin_buckets WHERE at < ?", [now - refill_all_s])  # full again: same as no row
    return None


def give_back(db: sqlite_utils.Database, keys: Sequence[tuple[str, throttle.RatePolicy]], now: float) -> None:
    """Return the tokens a successful sign-in reserved."""
    if not keys:
        return
    rows = {r[0]: throttle.Bucket(r[1], r[2]) for r in db.execute(
        f"SELECT key, tokens, at FROM kiosk_signin_buckets WHERE key IN ({','.join('?' * len(keys))})", [k for k, _ in keys]).fetchall()}
    _write(db, [(key, throttle.give_back(rows.get(key), now, policy)) for key, policy in keys])


def _write(db: sqlite_utils.Database, buckets: Sequence[tuple[str, throttle.Bucket]]) -> None:
    for key, b in buckets:
        db.execute("INSERT INTO kiosk_signin_buckets (key, tokens, at) VALUES (?, ?, ?)"
                   " ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, at = excluded.at", [key, b.tokens, b.at])
