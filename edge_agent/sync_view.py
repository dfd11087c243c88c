"""What the box's front ends show about federated sync, read without importing ``sync``.

``sync`` sits above the box (it imports the daemon, never the reverse), yet
the kiosk's status bar and the technician's console must say what waits to
be sent and when the box last reached the coordinator.  Both are plain data
the sync package leaves behind: the ``sync_outbox`` table of the box
database (schema component ``sync``) and ``$MAMMO_HOME/sync/link.json``,
which the box's ClientApp rewrites after each exchange.  This reader only
reads them; their meaning is defined in ``sync.outbox`` and ``sync.box_side``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

OPEN_STATES = ("awaiting_kit", "queued", "sending")
#: "Sync now": the console leaves this file; the box's sync supervisor (sync.service) sees it, removes it and reconnects
#: its SuperNode at once instead of waiting out a back-off.  The coordinator asks as soon as the node is back.
SYNC_NOW_FILE = "now"


@dataclass(frozen=True)
class SyncSummary:
    counts: dict[str, int]
    pending: int
    pending_bytes: int
    oldest_pending_at: float | None
    last_ack_at: float | None
    last_contact_at: float | None
    coordinator: str | None
    model_version: str | None
    last_release: dict[str, Any] | None
    recent: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def last_sync_at(self) -> float | None:
        """The last time the coordinator heard from this box (an exchange, with or without an update)."""
        return self.last_contact_at or self.last_ack_at


def read_link(home: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((home / "sync" / "link.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data


def summary(db: sqlite_utils.Database, home: Path, *, recent: int = 0) -> SyncSummary:
    """Outbox counts and the last exchange; zeros (not an error) on a box whose schema predates the outbox."""
    link = read_link(home)
    has_table = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sync_outbox'").fetchone() is not None
    counts: dict[str, int] = {}
    pending_bytes, oldest, last_ack = 0, None, None
    rows: tuple[dict[str, Any], ...] = ()
    if has_table:
        counts = {str(r[0]): int(r[1]) for r in db.execute("SELECT state, count(*) FROM sync_outbox GROUP BY state").fetchall()}
        pending_bytes, oldest = db.execute("SELECT coalesce(sum(bytes), 0), min(placed_at) FROM sync_outbox WHERE closed_at IS NULL").fetchone()
        last_ack = db.execute("SELECT max(closed_at) FROM sync_outbox WHERE state = 'acknowledged'").fetchone()[0]
        if recent:
            keys = ("update_id", "state", "placed_at", "attempts", "bytes", "epsilon", "example_count")
            rows = tuple(dict(zip(keys, r, strict=True)) for r in db.execute(
                f"SELECT {', '.join(keys)} FROM sync_outbox ORDER BY placed_at DESC LIMIT ?", [recent]).fetchall())
    return SyncSummary(counts, sum(counts.get(s, 0) for s in OPEN_STATES), int(pending_bytes), oldest, last_ack or link.get("last_ack_at"),
                       link.get("last_contact_at"), link.get("coordinator"), link.get("model_version"), link.get("last_release"), rows)


def request_sync_now(home: Path) -> Path:
    """Ask the running sync service to reconnect now (a file, so the console needs no socket to the daemon)."""
    import time

    folder = home / "sync"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / SYNC_NOW_FILE
    path.write_text(str(time.time()), encoding="ascii")
    return path
