"""The box's side of a sync exchange: what the ClientApp does with a coordinator's message, over the box's own files.

Training happened offline; when the link is up the coordinator asks and the
box answers from its outbox (``sync.outbox``).  One exchange, in order:

1. apply the acknowledgements (close each acknowledged update: exactly once =
   sent at least once + de-duplicated by hash at the coordinator + this ack)
   and rejections;
2. check the signed round manifests offered: signed by the federation's
   model-signing key, and naming this box's acknowledged updates
   (the verifiable round);
3. verify, self-test and activate an offered release through the box's own
   activation path (``ModelRegistry``), which refuses anything not signed by
   the federation;
4. hand over at most one pending encrypted update (marked ``sending`` first,
   so a crash mid-upload leaves it to be sent again).

Each exchange writes ``$MAMMO_HOME/sync/link.json`` (last contact, last
acknowledgement, last release) for the kiosk and the console, which read it
without importing sync; what matters for an inspector goes to the audit
trail.  Each Flower message runs in a fresh ClientApp process, so everything
opens from ``home`` and closes again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlite_utils

from edge_agent import audit
from edge_agent.errors import MammoError, SyncError
from edge_agent.settings import Settings
from edge_agent.store import open_database
from provisioning import enrolment
from sync import outbox
from sync.flower.protocol import Answer, DecryptAnswer, DecryptRequest, Poll, unpack_release

log = logging.getLogger(__name__)

ACTOR = "sync"
LINK_FILE = "link.json"


def settings_for(home: Path) -> Settings:
    """The box's settings as its daemon loads them, for ``home`` whatever MAMMO_HOME this process inherited."""
    env = dict(os.environ)
    env["MAMMO_HOME"] = str(home)
    return Settings.load(env=env)


@contextlib.contextmanager
def opened(home: Path) -> Iterator[tuple[Settings, sqlite_utils.Database]]:
    settings = settings_for(home)
    db = open_database(settings.db_path, max_size_mb=settings.db_max_size_mb)
    try:
        yield settings, db
    finally:
        db.conn.close()


def sync_dir(settings: Settings) -> Path:
    path = settings.home / "sync"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def read_link(home: Path) -> dict[str, Any]:
    """What the last exchanges left in link.json (empty before the first)."""
    try:
        data: dict[str, Any] = json.loads((home / "sync" / LINK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data


def _write_link(settings: Settings, **changes: Any) -> None:
    path = sync_dir(settings) / LINK_FILE
    data = read_link(settings.home) | changes
    tmp = path.with_name(f".{LINK_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def answer(home: Path, poll: Poll, *, now: float | None = None) -> Answer:
    """Everything a box does with one ``query.sync``; returns its reply."""
    now = time.time() if now is None else now
    with opened(home) as (settings, db):
        folder = enrolment.folder_of(settings)
        kit = enrolment.installed_kit(folder)
        if kit is None:
            raise SyncError("This box has no startup kit, so it cannot sync. Fix: install one (`mammo provision install KIT`).")
        confirmed = []
        for sha in poll.acks:
            if outbox.acknowledge(db, sha, now=now):
                audit.append(db, ACTOR, "sync_acknowledged", sha, {"coordinator": kit.coordinator}, at=now)
            confirmed.append(sha)
        for sha, reason in poll.rejects:
            if outbox.reject(db, sha, reason, now=now):
                audit.append(db, ACTOR, "sync_rejected", sha, {"reason": reason}, at=now)
            confirmed.append(sha)
        if poll.kit is not None:
            kit = _install_renewed(settings, db, poll.kit, kit, now)
        renewal = _renewal_request(settings, kit, now) if poll.kit is None else None
        checks = tuple(check_manifest(db, m, kit.signing_keys, now) for m in poll.manifests)
        release_result = _take_release(settings, db, poll) if poll.release else None
        active = _active_version(settings, db)
        update, data = None, None
        for entry in outbox.pending(db, limit=1):
            assert entry.sha256 is not None
            data = outbox.ciphertext(db, entry.sha256)
            entry = outbox.mark_sending(db, entry.sha256, now=now)
            update = entry.metadata() | {"attempts": entry.attempts}
            if entry.attempts == 1:
                audit.append(db, ACTOR, "sync_upload", entry.sha256, {"update_id": entry.update_id, "bytes": len(data), "epsilon": entry.epsilon,
                                                                      "example_count": entry.example_count}, at=now)
        status = outbox.status(db, now=now).as_dict()
        link: dict[str, Any] = {"last_contact_at": now, "coordinator": kit.coordinator, "model_version": active}
        if confirmed:
            link["last_ack_at"] = now
        if release_result is not None:
            link["last_release"] = release_result
        _write_link(settings, **link)
        return Answer(kit.box_id, enrolment.certificate_pem(folder) or "", active, tuple(confirmed), update, data, checks, release_result,
                      {k: status[k] for k in ("pending", "pending_bytes", "oldest_pending_age_s", "last_ack_at")}, renewal)


def _renewal_request(settings: Settings, kit: Any, now: float) -> dict[str, Any] | None:
    """A request for a renewed certificate (same box key) once the certificate is within ``sync_renew_days`` of its end."""
    from edge_agent.box import open_keystore

    days_left = (kit.not_after - dt.datetime.fromtimestamp(now, dt.UTC)).total_seconds() / 86400
    if not settings.sync_renew_days or days_left > settings.sync_renew_days:
        return None
    try:
        keystore = open_keystore(settings, interactive=False)
        csr = enrolment.make_request(keystore, enrolment.folder_of(settings))
    except MammoError as exc:
        log.warning("certificate ends in %.1f days but no renewal was requested: %s", days_left, exc)
        return None
    return {"csr": csr.decode("ascii"), "settings": dict(kit.settings), "coordinator": kit.coordinator}


def _install_renewed(settings: Settings, db: sqlite_utils.Database, raw: bytes, current: Any, now: float) -> Any:
    """Install a renewed kit through enrolment's own checks (same authority, this box's key, not older); audit either way."""
    from edge_agent.box import open_keystore

    try:
        kit = enrolment.install(raw, keystore=open_keystore(settings, interactive=False), folder=enrolment.folder_of(settings))
    except MammoError as exc:
        audit.append(db, ACTOR, "sync_renewal_refused", None, {"reason": str(exc)[:500]}, at=now)
        log.warning("renewed kit refused: %s", exc)
        return current
    audit.append(db, ACTOR, "sync_certificate_renewed", f"{kit.certificate.serial_number:x}", {"not_after": kit.not_after.isoformat()}, at=now)
    return kit


def decrypt(home: Path, request: DecryptRequest) -> DecryptAnswer:
    """Decrypt a round's encrypted weighted mean with the clinics' secret context (needs the keystore: TPM or demo passphrase)."""
    from edge_agent.box import open_keystore
    from provisioning import he as he_material
    from sync import he

    with opened(home) as (settings, db):
        folder = enrolment.folder_of(settings)
        kit = enrolment.installed_kit(folder)
        if kit is None:
            raise SyncError("This box has no startup kit, so it cannot decrypt. Fix: install one.")
        keystore = open_keystore(settings, interactive=False)
        ctx = he_material.load_context(enrolment.he_secret_context(keystore, folder), need_secret=True)
        mean = he.decrypt(ctx, request.aggregate)
        audit.append(db, ACTOR, "sync_decrypt_aggregate", str(request.round_id), {"values": int(mean.size)})
        return DecryptAnswer(request.round_id, kit.box_id, mean)


def _active_version(settings: Settings, db: sqlite_utils.Database) -> str | None:
    """The release the box screens with, as the federation knows it: for the box's own adaptation, the release it came from."""
    from edge_agent.inference.activation import ModelRegistry

    act = ModelRegistry(db, settings).active()
    return act.generation if act else None


def _take_release(settings: Settings, db: sqlite_utils.Database, poll: Poll) -> dict[str, Any]:
    """Unpack an offered release under models/ and activate it through the box's activation path (signature, self-test)."""
    from edge_agent.inference.activation import ModelRegistry

    version = poll.release_version or "unknown"
    target = settings.models_dir / version
    registry = ModelRegistry(db, settings)
    active = registry.active()
    if active is not None and active.version == version and active.path == target:
        return {"version": version, "ok": True, "note": "already active"}
    staging = settings.models_dir / f".incoming-{version}-{os.getpid()}"
    try:
        if target.exists():
            shutil.rmtree(target)  # an earlier copy that did not activate: take the coordinator's again
        settings.models_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        unpack_release(poll.release or b"", staging)
        os.replace(staging, target)
        activation = registry.activate(str(target), by=ACTOR, reason=f"federated release {version} from the coordinator")
    except (MammoError, ValueError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        audit.append(db, ACTOR, "sync_release_refused", version, {"reason": str(exc)[:500]})
        log.warning("federated release %s refused: %s", version, exc)
        return {"version": version, "ok": False, "error": str(exc)[:500]}
    return {"version": version, "ok": True, "selftest": activation.selftest}


def check_manifest(db: sqlite_utils.Database, signed: bytes, keys: Any, now: float) -> dict[str, Any]:
    """Verify a signed round manifest (``{"round", "body", "signature"}``) and say which of this box's updates it took; audit the inclusion."""
    from sync.coordinator import manifest as round_manifest

    number = None
    try:
        wrapped = json.loads(signed)
        number = int(wrapped["round"])
        m = round_manifest.verify_manifest(str(wrapped["body"]).encode(), str(wrapped["signature"]).encode(), keys, now=dt.datetime.fromtimestamp(now, dt.UTC))
    except (MammoError, ValueError, KeyError, TypeError) as exc:
        audit.append(db, ACTOR, "sync_manifest_refused", None if number is None else str(number), {"reason": str(exc)[:500]}, at=now)
        return {"ok": False, "round": number, "error": str(exc)[:500]}
    ours = {r[0] for r in db.execute("SELECT sha256 FROM sync_outbox WHERE sha256 IS NOT NULL").fetchall()}
    included = sorted(ours & {u.sha256 for u in m.updates})
    if included:
        audit.append(db, ACTOR, "sync_round_verified", str(m.round), {"included": included, "new_model_version": m.new_model_version}, at=now)
    return {"ok": True, "round": m.round, "included": included, "new_model_version": m.new_model_version}
