"""The box's sync service under ``mammo up``: its Flower SuperNode as a supervised child process.

It runs only when the box has a startup kit naming a coordinator and
``sync_enabled`` is true; otherwise it starts nothing and logs why (the
outbox keeps every finished update meanwhile).  The SuperNode:

* dials the kit's coordinator (or ``sync_superlink``) over TLS checked
  against the federation CA from the kit (``tls/ca.pem`` here);
* authenticates with the box's own P-256 enrolment key, the one its
  certificate certifies, written 0600 under ``$MAMMO_HOME/sync/`` for the
  time the child runs (Flower reads a key file) and removed when it stops;
* is restarted with a capped back-off when it exits: a revoked box's
  SuperNode exits at once on a refusal, and each restart logs it.

The ClientApp processes it starts inherit this process's environment (so the
keystore passphrase of a passphrase-protected box reaches the one step that
needs the HE secret: decrypting a round's mean).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from edge_agent.box import Box
from edge_agent.errors import SyncError
from edge_agent.settings import Settings
from provisioning import enrolment
from provisioning.keystore import Keystore
from sync.flower import processes

log = logging.getLogger(__name__)

KEY_FILE = "supernode-key"
RESTART_MIN_S, RESTART_MAX_S = 2.0, 60.0


def sync_folder(settings: Settings) -> Path:
    path = settings.home / "sync"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def why_not(settings: Settings) -> str | None:
    """The reason the box does not sync now, or None when it should."""
    if not settings.sync_enabled:
        return "sync_enabled is false"
    kit = enrolment.installed_kit(enrolment.folder_of(settings))
    if kit is None:
        return "the box has no startup kit (`mammo provision install KIT`)"
    if not (settings.sync_superlink or kit.coordinator):
        return "the startup kit names no coordinator and sync_superlink is empty"
    return None


def write_node_files(settings: Settings, keystore: Keystore) -> tuple[Path, Path]:
    """The SuperNode's key (OpenSSH, 0600) and the federation CA (PEM), from the box key and the installed kit."""
    folder = enrolment.folder_of(settings)
    kit = enrolment.installed_kit(folder)
    if kit is None:
        raise SyncError("The box has no startup kit. Fix: install one (`mammo provision install KIT`).")
    out = sync_folder(settings)
    key = processes.write_private(out / KEY_FILE, processes.ssh_private_key(enrolment.load_box_key(keystore, folder)))
    ca = processes.write_private(out / "ca.pem", kit.ca.public_bytes(serialization.Encoding.PEM))
    return key, ca


def start_supernode(settings: Settings, keystore: Keystore, *, superlink: str | None = None, env: dict[str, str] | None = None) -> processes.Child:
    """Start this box's SuperNode now (its address from ``superlink``, else sync_superlink, else the kit)."""
    kit = enrolment.installed_kit(enrolment.folder_of(settings))
    address = superlink or settings.sync_superlink or (kit.coordinator if kit else None)
    if not address:
        raise SyncError("No coordinator address. Fix: install a kit that names one, or set sync_superlink.")
    key, ca = write_node_files(settings, keystore)
    port = settings.sync_supernode_port or processes.free_port()
    child_env = {"MAMMO_HOME": str(settings.home)} | (env or {})
    return processes.start_supernode(sync_folder(settings), address, ca, key, port, {"home": str(settings.home)}, env=child_env)


def _supervise(box: Box, stop: threading.Event) -> None:
    delay = RESTART_MIN_S
    key = sync_folder(box.settings) / KEY_FILE
    try:
        while not stop.is_set():
            try:
                child = start_supernode(box.settings, box.keystore)
            except Exception:
                log.exception("sync: the SuperNode could not start; retrying in %.0f s", delay)
                stop.wait(delay)
                delay = min(delay * 2, RESTART_MAX_S)
                continue
            while not stop.wait(1.0) and child.alive():
                pass
            if stop.is_set():
                child.stop()
                break
            code = child.proc.returncode
            child.stop()
            log.warning("sync: the SuperNode exited with %s (refused, or the link failed for good); restarting in %.0f s. Log: %s",
                        code, delay, child.log_path)
            stop.wait(delay)
            delay = min(delay * 2, RESTART_MAX_S)
    finally:
        key.unlink(missing_ok=True)


def start_services(box: Box, stop: threading.Event) -> list[threading.Thread]:
    """Daemon hook for ``mammo up``: one supervisor thread, or none with the reason logged."""
    reason = why_not(box.settings)
    if reason is not None:
        log.info("sync: not started: %s", reason)
        return []
    os.umask(0o077)
    thread = threading.Thread(target=_supervise, args=(box, stop), name="sync-supernode", daemon=True)
    thread.start()
    return [thread]
