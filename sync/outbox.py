"""The box's durable outbox of finished local updates, encrypted for the federation.

Life of an update (one row of ``sync_outbox``, its payload in ``sync_outbox_payload``)::

    place_update ─┬─ kit installed ──────────────────────────────► queued ──mark_sending──► sending
                  └─ no kit yet ─► awaiting_kit ─encrypt_awaiting─►   ▲                       │  │
                                   (delta sealed under the            └──── mark_failed ──────┘  │
                                    box keystore, not sendable)                                  │
                                                     acknowledge(sha) ◄──────────────────────────┤
                                                     reject(sha) ◄───────────────────────────────┘

Delivery is exactly once by construction of three parts: the box sends at
least once (a row stays ``queued``/``sending`` until the coordinator's
acknowledgement names its hash, and ``pending()`` returns ``sending`` rows too,
so an upload cut by SIGKILL or a dropped link is sent again); the coordinator
de-duplicates by the hash (``sync.coordinator.store``); and the acknowledgement
comes back by hash.  Nothing expires: a box offline for 30 days keeps every
update, and only an acknowledgement or a rejection closes a row.

The delta is encrypted at once with the clinics' CKKS context from the
installed startup kit (``provisioning.enrolment.he_secret_context``), so only
ciphertext is kept.  A box without a kit cannot encrypt: it keeps the update
durable but not sendable (``awaiting_kit``), the plaintext delta sealed with
AES-256-GCM under a key the box keystore derives (as the image store seals
images), and :func:`encrypt_awaiting` turns it into ciphertext once a kit is
installed.  The payload is a BLOB in the same transaction as its row, so a
power cut leaves the row with its payload or neither; SQLite (WAL,
``synchronous=FULL``) makes the commit durable.  The ciphertext is dropped
once acknowledged (the row and its hash stay, for the round manifest check).

Every function takes the box database and an optional ``now`` (epoch
seconds), so tests drive the clock.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from edge_agent.errors import IntegrityError, ProvisioningError, SyncError
from edge_agent.store import transaction
from provisioning import enrolment
from provisioning import he as he_material
from provisioning.envelope import open_sealed, seal
from provisioning.keystore import Keystore
from sync import he
from sync.update import LocalUpdate, TrainableSpec

log = logging.getLogger(__name__)

STATES = ("awaiting_kit", "queued", "sending", "acknowledged", "rejected")
OPEN_STATES = ("awaiting_kit", "queued", "sending")
SEAL_PURPOSE = "sync-outbox-plaintext"
_COLUMNS = ("update_id, sha256, base_model_version, spec, spec_digest, value_count, example_count, epsilon, delta_dp, noise_multiplier, "
            "local_metrics, he_version, state, attempts, last_error, bytes, created_at, placed_at, queued_at, last_attempt_at, closed_at")


@dataclass(frozen=True)
class OutboxEntry:
    """One update as the outbox holds it (no payload: read that with :func:`ciphertext`)."""

    update_id: str
    sha256: str | None
    base_model_version: str
    spec: TrainableSpec
    value_count: int
    example_count: int
    epsilon: float
    delta_dp: float
    noise_multiplier: float
    local_metrics: dict[str, float]
    he_version: int | None
    state: str
    attempts: int
    last_error: str | None
    bytes: int | None
    created_at: float
    placed_at: float
    queued_at: float | None
    last_attempt_at: float | None
    closed_at: float | None

    @property
    def spec_digest(self) -> str:
        return self.spec.digest

    def metadata(self) -> dict[str, Any]:
        """What travels beside the ciphertext to the coordinator (``sync.coordinator.store.Incoming.from_metadata``).

        Counts and the privacy cost only: nothing about any woman.
        """
        if self.sha256 is None:
            raise SyncError(f"Update {self.update_id} is not encrypted yet (no startup kit), so it cannot be sent. Fix: install the kit.")
        return {"update_id": self.update_id, "sha256": self.sha256, "base_model_version": self.base_model_version,
                "spec_digest": self.spec.digest, "value_count": self.value_count, "example_count": self.example_count,
                "epsilon": self.epsilon, "delta_dp": self.delta_dp, "noise_multiplier": self.noise_multiplier,
                "local_metrics": dict(self.local_metrics), "he_version": self.he_version, "created_at": self.created_at}


@dataclass(frozen=True)
class OutboxStatus:
    """What the ClientApp, the kiosk status bar and the console show about the outbox."""

    counts: dict[str, int]
    pending: int
    pending_bytes: int
    oldest_pending_at: float | None
    oldest_pending_age_s: float | None
    last_ack_at: float | None
    last_attempt_at: float | None
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- placing -------------------------------------------------------------------------------------------------------


def place_update(box_db: sqlite_utils.Database, home: Path, update: LocalUpdate, *, keystore: Keystore | None = None,
                 now: float | None = None) -> str:
    """Keep ``update`` durably, encrypted if the box has a startup kit; returns its ``update_id``.

    Idempotent by ``update_id``: placing the same round again (a training process that
    died after this returned, before it recorded so) changes nothing.  ``keystore``
    defaults to the box keystore opened from ``home``'s settings, without a prompt.
    """
    if get(box_db, update.update_id) is not None:
        return update.update_id
    keystore = keystore or _open_keystore(home)
    now = time.time() if now is None else now
    ctx_version = _kit_context(keystore, home)
    row = _row(update, now)
    if ctx_version is None:
        payload = ("sealed", seal(keystore.secret(SEAL_PURPOSE), update.delta.tobytes(), _aad(update.update_id, update.spec)))
        row.update(state="awaiting_kit")
        log.info("Update %s kept sealed, awaiting a startup kit to encrypt it for the federation.", update.update_id)
    else:
        ctx, version = ctx_version
        data = he.encrypt(ctx, update.delta)
        payload = ("ckks", data)
        row.update(state="queued", sha256=he.sha256(data), he_version=version, bytes=len(data), queued_at=now)
    with transaction(box_db) as db:
        if db.execute("SELECT 1 FROM sync_outbox WHERE update_id = ?", [update.update_id]).fetchone():
            return update.update_id  # another process placed it meanwhile
        db.execute(f"INSERT INTO sync_outbox ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
        db.execute("INSERT INTO sync_outbox_payload (update_id, kind, data) VALUES (?, ?, ?)", [update.update_id, *payload])
    if ctx_version is not None:
        encrypt_awaiting(box_db, home, keystore=keystore, now=now)  # older updates kept before the kit arrived
    return update.update_id


def encrypt_awaiting(box_db: sqlite_utils.Database, home: Path, *, keystore: Keystore | None = None, now: float | None = None) -> list[str]:
    """Encrypt every ``awaiting_kit`` update now that a kit is installed; returns the hashes queued (empty without a kit).

    :func:`place_update` calls it whenever it encrypts; the sync service calls it too, so
    updates kept before enrolment leave without waiting for the next training round.
    """
    waiting = [r[0] for r in box_db.execute("SELECT update_id FROM sync_outbox WHERE state = 'awaiting_kit' ORDER BY placed_at").fetchall()]
    if not waiting:
        return []
    keystore = keystore or _open_keystore(home)
    ctx_version = _kit_context(keystore, home)
    if ctx_version is None:
        return []
    ctx, version = ctx_version
    queued = []
    for update_id in waiting:
        entry = get(box_db, update_id)
        payload = box_db.execute("SELECT kind, data FROM sync_outbox_payload WHERE update_id = ?", [update_id]).fetchone()
        if entry is None or entry.state != "awaiting_kit" or payload is None or payload[0] != "sealed":
            continue
        try:
            plain = open_sealed(keystore.secret(SEAL_PURPOSE), bytes(payload[1]), _aad(update_id, entry.spec))
        except IntegrityError:
            log.error("Sealed update %s does not open with this box's keystore (damaged, or from another box); left as it is.", update_id)
            continue
        delta = np.frombuffer(plain, dtype=np.float32)
        if delta.size != entry.value_count:
            log.error("Sealed update %s holds %d values, its row says %d; left as it is.", update_id, delta.size, entry.value_count)
            continue
        data = he.encrypt(ctx, delta)
        sha = he.sha256(data)
        at = time.time() if now is None else now
        with transaction(box_db) as db:
            cur = db.execute("UPDATE sync_outbox SET state = 'queued', sha256 = ?, he_version = ?, bytes = ?, queued_at = ? "
                             "WHERE update_id = ? AND state = 'awaiting_kit'", [sha, version, len(data), at, update_id])
            if cur.rowcount != 1:
                continue  # another process encrypted it first
            db.execute("UPDATE sync_outbox_payload SET kind = 'ckks', data = ? WHERE update_id = ?", [data, update_id])
        queued.append(sha)
    return queued


# --- sending -------------------------------------------------------------------------------------------------------


def pending(box_db: sqlite_utils.Database, *, limit: int | None = None) -> list[OutboxEntry]:
    """Sendable updates, oldest first: ``queued`` and ``sending`` (an upload a crash or a dropped link cut short is sent again)."""
    sql = f"SELECT {_COLUMNS} FROM sync_outbox WHERE closed_at IS NULL AND state != 'awaiting_kit' ORDER BY placed_at, update_id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [_entry(r) for r in box_db.execute(sql).fetchall()]


def ciphertext(box_db: sqlite_utils.Database, sha: str) -> bytes:
    """The framed ciphertext of a sendable update, checked against its hash (a damaged one raises, never goes out)."""
    row = box_db.execute("SELECT p.kind, p.data FROM sync_outbox o JOIN sync_outbox_payload p USING (update_id) WHERE o.sha256 = ?", [sha]).fetchone()
    if row is None or row[0] != "ckks":
        raise SyncError(f"The outbox holds no ciphertext for update {sha[:12]}… (acknowledged already, or unknown). Nothing to send.")
    data = bytes(row[1])
    if he.sha256(data) != sha:
        raise IntegrityError(f"The outbox's ciphertext for update {sha[:12]}… no longer matches its hash (disk damage); it cannot be sent. Fix: check the disk; the next training round makes a new update.")
    return data


def mark_sending(box_db: sqlite_utils.Database, sha: str, *, now: float | None = None) -> OutboxEntry:
    """Record an upload attempt (``attempts`` + 1) before the bytes go out; returns the entry (a closed one is returned unchanged)."""
    at = time.time() if now is None else now
    with transaction(box_db) as db:
        db.execute("UPDATE sync_outbox SET state = 'sending', attempts = attempts + 1, last_attempt_at = ? "
                   "WHERE sha256 = ? AND (state = 'queued' OR state = 'sending')", [at, sha])
    return _require(box_db, sha)


def mark_failed(box_db: sqlite_utils.Database, sha: str, error: str) -> OutboxEntry:
    """An attempt failed (link down, timeout): back to ``queued`` with the reason, to be sent again."""
    with transaction(box_db) as db:
        db.execute("UPDATE sync_outbox SET state = 'queued', last_error = ? WHERE sha256 = ? AND state = 'sending'", [error[:500], sha])
    return _require(box_db, sha)


def acknowledge(box_db: sqlite_utils.Database, sha: str, *, now: float | None = None) -> bool:
    """The coordinator holds the update (accepted or already had it): close it and drop its ciphertext.

    True when this call closed it; False when it was already acknowledged, or the hash is
    not ours (logged), so a repeated acknowledgement is harmless.
    """
    at = time.time() if now is None else now
    with transaction(box_db) as db:
        row = db.execute("SELECT update_id, state FROM sync_outbox WHERE sha256 = ?", [sha]).fetchone()
        if row is None:
            log.warning("Acknowledgement for update %s…, which this outbox never held; ignored.", sha[:12])
            return False
        if row[1] == "acknowledged":
            return False
        db.execute("UPDATE sync_outbox SET state = 'acknowledged', closed_at = ?, last_error = NULL WHERE update_id = ?", [at, row[0]])
        db.execute("DELETE FROM sync_outbox_payload WHERE update_id = ?", [row[0]])
    return True


def reject(box_db: sqlite_utils.Database, sha: str, reason: str, *, now: float | None = None) -> bool:
    """The coordinator refused the update for good (too stale, another spec or HE version): close it with the reason."""
    at = time.time() if now is None else now
    with transaction(box_db) as db:
        row = db.execute("SELECT update_id, state FROM sync_outbox WHERE sha256 = ?", [sha]).fetchone()
        if row is None or row[1] in ("acknowledged", "rejected"):
            return False
        db.execute("UPDATE sync_outbox SET state = 'rejected', closed_at = ?, last_error = ? WHERE update_id = ?", [at, reason[:500], row[0]])
        db.execute("DELETE FROM sync_outbox_payload WHERE update_id = ?", [row[0]])
    log.warning("Update %s… was rejected by the coordinator: %s", sha[:12], reason)
    return True


# --- reading -------------------------------------------------------------------------------------------------------


def get(box_db: sqlite_utils.Database, key: str) -> OutboxEntry | None:
    """An entry by ``update_id`` or by ciphertext hash."""
    row = box_db.execute(f"SELECT {_COLUMNS} FROM sync_outbox WHERE update_id = ? OR sha256 = ?", [key, key]).fetchone()
    return _entry(row) if row else None


def entries(box_db: sqlite_utils.Database, *, limit: int = 100) -> list[OutboxEntry]:
    """The most recent updates, newest first (the console's sync screen)."""
    return [_entry(r) for r in box_db.execute(f"SELECT {_COLUMNS} FROM sync_outbox ORDER BY placed_at DESC, update_id LIMIT ?", [limit]).fetchall()]


def status(box_db: sqlite_utils.Database, *, now: float | None = None) -> OutboxStatus:
    """Counts per state, what waits and since when, the last acknowledgement and attempt."""
    now = time.time() if now is None else now
    counts = dict.fromkeys(STATES, 0)
    counts.update({r[0]: r[1] for r in box_db.execute("SELECT state, count(*) FROM sync_outbox GROUP BY state").fetchall()})
    oldest, pending_bytes = box_db.execute("SELECT min(placed_at), coalesce(sum(bytes), 0) FROM sync_outbox WHERE closed_at IS NULL").fetchone()
    last_ack = box_db.execute("SELECT max(closed_at) FROM sync_outbox WHERE state = 'acknowledged'").fetchone()[0]
    last = box_db.execute("SELECT last_attempt_at, last_error FROM sync_outbox WHERE last_attempt_at IS NOT NULL ORDER BY last_attempt_at DESC LIMIT 1").fetchone()
    return OutboxStatus(counts=counts, pending=sum(counts[s] for s in OPEN_STATES), pending_bytes=int(pending_bytes),
                        oldest_pending_at=oldest, oldest_pending_age_s=None if oldest is None else max(0.0, now - oldest),
                        last_ack_at=last_ack, last_attempt_at=last[0] if last else None, last_error=last[1] if last else None)


# --- inside ---------------------------------------------------------------------------------------------------------


def _open_keystore(home: Path) -> Keystore:
    from edge_agent.box import open_keystore
    from edge_agent.settings import Settings

    return open_keystore(Settings.load(home=home), interactive=False)


def _kit_context(keystore: Keystore, home: Path) -> tuple[Any, int] | None:
    """The clinics' CKKS context and its HE version from the installed kit, or None when the box has no kit."""
    folder = home / "provisioning"
    try:
        kit = enrolment.installed_kit(folder)
        if kit is None:
            return None
        return he_material.load_context(enrolment.he_secret_context(keystore, folder), need_secret=True), kit.he_version
    except (ProvisioningError, IntegrityError) as exc:  # a damaged kit must not cost the update: keep it sealed until the kit is fixed
        log.error("The installed startup kit cannot give the HE context (%s); updates wait sealed (awaiting_kit) until it is reinstalled.", exc)
        return None


def _row(update: LocalUpdate, now: float) -> dict[str, Any]:
    return {"update_id": update.update_id, "base_model_version": update.base_model_version, "spec": json.dumps(update.spec.as_dict()),
            "spec_digest": update.spec.digest, "value_count": update.spec.size, "example_count": int(update.example_count),
            "epsilon": float(update.epsilon), "delta_dp": float(update.delta_dp), "noise_multiplier": float(update.noise_multiplier),
            "local_metrics": json.dumps({k: float(v) for k, v in update.local_metrics.items()}, sort_keys=True),
            "created_at": update.created_at.timestamp(), "placed_at": now}


def _aad(update_id: str, spec: TrainableSpec) -> bytes:
    return f"mammo-outbox-plain:{update_id}:{spec.digest}".encode()


def _entry(r: Any) -> OutboxEntry:
    return OutboxEntry(update_id=r[0], sha256=r[1], base_model_version=r[2], spec=TrainableSpec.from_dict(json.loads(r[3])),
                       value_count=r[5], example_count=r[6], epsilon=r[7], delta_dp=r[8], noise_multiplier=r[9],
                       local_metrics=json.loads(r[10]), he_version=r[11], state=r[12], attempts=r[13], last_error=r[14], bytes=r[15],
                       created_at=r[16], placed_at=r[17], queued_at=r[18], last_attempt_at=r[19], closed_at=r[20])


def _require(box_db: sqlite_utils.Database, sha: str) -> OutboxEntry:
    entry = get(box_db, sha)
    if entry is None:
        raise SyncError(f"The outbox holds no update {sha[:12]}…. Fix: list the pending updates again (sync.outbox.pending).")
    return entry
