"""Quarantine, never loss: every refused file is kept sealed, with its reason, until a person decides.

The file itself (with its patient identity) is sealed on disk under its
SHA-256; the database row holds only the reason, the source kind and the
size. The name the file arrived under (a USB path can contain a patient's
name) is sealed together with the bytes, never stored in the clear.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from edge_agent.errors import QuarantineNotFound
from edge_agent.ingest.image_store import atomic_write, sha256
from edge_agent.ingest.records import Fix, QuarantineEntry
from edge_agent.ingest.studies import fixes_json
from edge_agent.store import transaction
from provisioning.envelope import open_sealed, seal

AAD = b"mammo-quarantine:"


class Quarantine:
    def __init__(self, db: sqlite_utils.Database, root: Path, master_key: bytes) -> None:
        self.db = db
        self.root = Path(root)
        self._key = master_key

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def hold(self, data: bytes, *, reason_code: str, reason: str, source: str, label: str, fixes: tuple[Fix, ...], now: float | None = None) -> int:
        """Seal the file and record why; holding the same bytes again updates the reason, not a new entry."""
        digest = self.keep(data, source=source, label=label)
        return self.record(digest, size=len(data), reason_code=reason_code, reason=reason, source=source, fixes=fixes, now=now)

    def keep(self, data: bytes, *, source: str, label: str) -> str:
        """The first half of ``hold``: seal the file on disk (no database), so callers may do it outside their database lock."""
        digest = sha256(data)
        header = json.dumps({"label": label, "source": source}, ensure_ascii=False).encode("utf-8")
        atomic_write(self._path(digest), seal(self._key, struct.pack(">I", len(header)) + header + data, AAD + digest.encode()))
        return digest

    def record(self, digest: str, *, size: int, reason_code: str, reason: str, source: str, fixes: tuple[Fix, ...], now: float | None = None) -> int:
        """The second half of ``hold``: the index row for a file ``keep`` sealed; returns its id."""
        now = time.time() if now is None else now
        with transaction(self.db) as db:
            row = db.execute(
                "INSERT INTO ingest_quarantine (digest, reason_code, reason, source, size, fixes, status, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 'held', ?)"
                " ON CONFLICT (digest) DO UPDATE SET reason_code = excluded.reason_code, reason = excluded.reason,"
                "   fixes = excluded.fixes, status = 'held', resolved_at = NULL"
                " RETURNING id",
                [digest, reason_code, reason, source, size, fixes_json(fixes), now],
            ).fetchone()
        return int(row[0])

    def entries(self, *, status: str | None = "held") -> list[QuarantineEntry]:
        sql = "SELECT id, digest, reason_code, reason, source, received_at, status, size, fixes FROM ingest_quarantine"
        params: list[object] = []
        if status:
            sql += " WHERE status = ?"
            params.append(status)
        return [_entry(r) for r in self.db.execute(sql + " ORDER BY id", params).fetchall()]

    def entry(self, qid: int) -> QuarantineEntry:
        row = self.db.execute(
            "SELECT id, digest, reason_code, reason, source, received_at, status, size, fixes FROM ingest_quarantine WHERE id = ?", [qid]
        ).fetchone()
        if row is None:
            raise QuarantineNotFound(f"No quarantined file with id {qid}; `mammo quarantine list` shows the ids.")
        return _entry(row)

    def open(self, qid: int) -> tuple[bytes, str]:
        """The original bytes and the name they arrived under (decrypted; stays on the box)."""
        e = self.entry(qid)
        if e.status == "purged":
            raise QuarantineNotFound(f"Quarantined file {qid} was purged; its content is gone.")
        blob = open_sealed(self._key, self._path(e.digest).read_bytes(), AAD + e.digest.encode())
        n = struct.unpack(">I", blob[:4])[0]
        header = json.loads(blob[4 : 4 + n].decode("utf-8"))
        return blob[4 + n :], header.get("label", "")

    def mark(self, qid: int, status: str, *, now: float | None = None) -> None:
        e = self.entry(qid)
        with transaction(self.db) as db:
            db.execute("UPDATE ingest_quarantine SET status = ?, resolved_at = ? WHERE id = ?", [status, time.time() if now is None else now, qid])
        if status in ("released", "purged"):
            try:
                self._path(e.digest).unlink()
            except FileNotFoundError:
                pass


def _entry(r: Sequence[Any]) -> QuarantineEntry:
    fixes = tuple(Fix(f["code"], f["message"], f.get("tag", "")) for f in json.loads(r[8] or "[]"))
    return QuarantineEntry(id=r[0], digest=r[1], reason_code=r[2], reason=r[3], source=r[4], received_at=r[5], status=r[6], size=r[7], fixes=fixes)
