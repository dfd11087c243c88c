"""``mammo bench audit``: what the hash chain costs per append, and how long verifying a long trail takes.

Appends: three writers log the same record, each commit or record made
durable before the next starts.  Ours (``edge_agent.audit.append``: BEGIN
IMMEDIATE, read the last hash, hash, INSERT, COMMIT, with a checkpoint signed
every 1000 entries) against two named peers: a plain SQLite INSERT of the
same row into the same table (same indexes and triggers, no chaining) in its
own transaction on a connection opened the same way (WAL, synchronous=FULL,
as the box ships: one WAL fsync per commit; the level is read back from each
connection and printed), so the difference is the chaining alone; and Python's ``logging`` writing JSON lines to a
file with flush + ``os.fsync`` per record.  The writers take turns in slices
so load from other processes lands on all of them alike; each figure is the
total over all its slices.

Verify: a trail of ``entries`` chained entries (checkpoints every 1000) is
written in bulk, then ``audit.verify`` is timed beside a plain read of the
same rows in the same order without hashing: the difference is what the
check itself costs.  CPU seconds are printed beside the wall time, since
on a shared machine the wall time mostly measures the other processes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent import audit
from edge_agent.store import open_database, transaction

SLICE = 100
DETAILS = {"detail": "1.2.826.0.1.3680043.10.543.1234567890 heatmap"}


class EphemeralSigner:
    """A throwaway box key, so the benchmark needs no keystore."""

    box_id = "bench"

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class _FsyncHandler(logging.FileHandler):
    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if self.stream is not None:
            self.stream.flush()
            os.fsync(self.stream.fileno())


def run(*, appends: int, entries: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mammo-bench-audit-") as tmp:
        folder = Path(tmp)
        result = _appends(folder, appends)
        result["verify"] = _verify(folder / "long.db", entries)
    return result


def _appends(folder: Path, n: int) -> dict[str, Any]:
    signer = EphemeralSigner()
    chained = open_database(folder / "chained.db")
    plain = open_database(folder / "plain.db")  # the same table, indexes and triggers; rows left unchained
    logger = logging.getLogger("mammo.bench.audit")
    logger.propagate = False
    handler = _FsyncHandler(folder / "audit.log", encoding="utf-8")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def ours() -> None:
        audit.append(chained, "bench", "view_image", "1.2.826.0.1.3680043.10.543.1", DETAILS, signer=signer, checkpoint_every=1000)

    def sqlite_insert() -> None:
        with transaction(plain) as db:
            db.execute("INSERT INTO audit_log (at, actor, action, object, details) VALUES (?, ?, ?, ?, ?)",
                       [time.time(), "bench", "view_image", "1.2.826.0.1.3680043.10.543.1", audit.canonical_details(DETAILS)])

    def logging_fsync() -> None:
        logger.info(json.dumps({"at": time.time(), "actor": "bench", "action": "view_image", "object": "1.2.826.0.1.3680043.10.543.1",
                                "details": DETAILS}))

    writers = {"mammo audit.append (chained, signed)": ours, "plain SQLite INSERT (same table, unchained)": sqlite_insert,
               "Python logging + fsync per record": logging_fsync}
    spent = dict.fromkeys(writers, 0.0)
    try:
        done = 0
        turn = 0
        while done < n:
            k = min(SLICE, n - done)
            names = list(writers)
            names = names[turn % len(names):] + names[:turn % len(names)]  # who goes first rotates
            for name in names:
                t0 = time.perf_counter()
                for _ in range(k):
                    writers[name]()
                spent[name] += time.perf_counter() - t0
            done += k
            turn += 1
        sync = {"chained": chained.execute("PRAGMA synchronous").fetchone()[0], "plain": plain.execute("PRAGMA synchronous").fetchone()[0]}
        journal = chained.execute("PRAGMA journal_mode").fetchone()[0]
        valid = audit.verify(chained, signer).ok
    finally:
        logger.removeHandler(handler)
        handler.close()
        chained.conn.close()
        plain.conn.close()
    rates = {name: n / s for name, s in spent.items()}
    ours_rate, sqlite_rate, log_rate = rates.values()
    return {
        "appends": n, "appends_per_s": rates,
        "ratio_vs_sqlite_insert": ours_rate / sqlite_rate, "ratio_vs_logging_fsync": ours_rate / log_rate,
        "durability": f"SQLite journal_mode={journal}, synchronous={_SYNC.get(sync['chained'], sync['chained'])} (plain: "
                      f"{_SYNC.get(sync['plain'], sync['plain'])}): one WAL fsync per commit; logging: fsync per record",
        "chain_valid_after": valid,
    }


_SYNC = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def _verify(path: Path, n: int) -> dict[str, Any]:
    signer = EphemeralSigner()
    db = open_database(path)
    try:
        t0 = time.perf_counter()
        _bulk_trail(db, signer, n)
        build_s = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        rows = sum(1 for _ in db.execute("SELECT seq, at, actor, action, object, details, prev_hash, hash FROM audit_log ORDER BY seq"))
        scan_s, scan_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        report = audit.verify(db, signer)
        verify_s, verify_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    finally:
        db.conn.close()
    return {"entries": rows, "ok": report.ok, "checkpoints": report.checkpoints, "build_s": build_s, "verify_s": verify_s,
            "verify_cpu_s": verify_cpu_s, "scan_s": scan_s, "scan_cpu_s": scan_cpu_s, "ratio_vs_scan": verify_s / scan_s if scan_s else 0.0}


def _bulk_trail(db: Any, signer: EphemeralSigner, n: int, batch: int = 50_000) -> None:
    """``n`` chained entries written in large transactions (the timed part is the verification, not this)."""
    prev, seq, t = audit.GENESIS, 0, 1.7e9
    details = audit.canonical_details(DETAILS)
    while seq < n:
        rows, cps = [], []
        for _ in range(min(batch, n - seq)):
            seq += 1
            at = t + seq * 0.25
            h = audit.entry_hash(seq, at, "doktor", "view_image", "1.2.826.0.1.3680043.10.543.1", details, prev)
            rows.append((seq, at, "doktor", "view_image", "1.2.826.0.1.3680043.10.543.1", details, prev, h))
            prev = h
            if seq % 1000 == 0:
                cps.append(seq)
        with transaction(db):
            db.conn.executemany("INSERT INTO audit_log (seq, at, actor, action, object, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            for s in cps:
                audit.sign_checkpoint(db, signer, s, rows[s - rows[0][0]][7])
