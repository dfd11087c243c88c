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
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from edge_agent.box import Box
from edge_agent.errors import SyncError
from edge_agent.settings import Settings
from edge_agent.sync_view import SYNC_NOW_FILE
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


class Supervisor:
    """Keeps one SuperNode running for a box: restarts it with a capped back-off whenever it exits.

    A SuperNode exits when the coordinator refuses it (a revoked box, a 401), and also when it starts while the
    coordinator still counts its previous run as online: after a power cut (SIGKILL) Flower keeps the node "online"
    until its heartbeat lapses (up to about a minute) and refuses a second activation meanwhile.  Restarting until
    the link accepts covers both, and every exit is logged.
    """

    def __init__(self, settings: Settings, keystore: Keystore, *, superlink: str | None = None, env: dict[str, str] | None = None,
                 min_delay: float = RESTART_MIN_S, max_delay: float = RESTART_MAX_S) -> None:
        self.settings, self.keystore, self.superlink, self.env = settings, keystore, superlink, env
        self.min_delay, self.max_delay = min_delay, max_delay
        self.child: processes.Child | None = None
        self.starts = 0
        self.exits: list[int | None] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sync-supernode", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def alive(self) -> bool:
        with self._lock:
            return self.child is not None and self.child.alive()

    def stop(self, *, kill: bool = False) -> None:
        """Stop supervising and stop the SuperNode (SIGTERM, so Flower marks the node offline; ``kill``: SIGKILL, as a power cut)."""
        self._stop.set()
        with self._lock:
            child, self.child = self.child, None
        if child is not None:
            child.kill() if kill else child.stop()
        self._thread.join(timeout=30)
        if not kill:
            (sync_folder(self.settings) / KEY_FILE).unlink(missing_ok=True)

    def _run(self) -> None:
        delay = self.min_delay
        while not self._stop.is_set():
            try:
                with self._lock:
                    if self._stop.is_set():
                        return
                    self.child = start_supernode(self.settings, self.keystore, superlink=self.superlink, env=self.env)
                    self.starts += 1
                    child = self.child
            except Exception:
                log.exception("sync: the SuperNode could not start; retrying in %.0f s", delay)
                self._wait(delay)
                delay = min(delay * 2, self.max_delay)
                continue
            started = time.monotonic()
            while not self._stop.wait(0.5) and child.alive():
                if self._poked():  # "sync now" from the console: reconnect at once (Flower's own back-off reaches 20 s)
                    log.info("sync: reconnecting now, as asked")
                    with self._lock:
                        self.child = None
                    child.stop()
                    delay = self.min_delay
                    break
            else:
                if self._stop.is_set():
                    return
                code = child.proc.returncode
                with self._lock:
                    self.exits.append(code)
                    self.child = None
                child.stop()
                if time.monotonic() - started > 120:
                    delay = self.min_delay  # it ran a good while: this exit is news, not a refusal loop
                log.warning("sync: the SuperNode exited with %s (refused, still counted online after a crash, or the link failed for good); "
                            "restarting in %.0f s. Log: %s", code, delay, child.log_path)
                self._wait(delay)
                delay = min(delay * 2, self.max_delay)
            if self._stop.is_set():
                return

    def _poked(self) -> bool:
        path = sync_folder(self.settings) / SYNC_NOW_FILE
        if not path.exists():
            return False
        path.unlink(missing_ok=True)
        return True

    def _wait(self, seconds: float) -> None:
        """Wait out a back-off, cut short by a stop or a "sync now"."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
            if self._poked():
                return


def _supervise(box: Box, stop: threading.Event) -> None:
    supervisor = Supervisor(box.settings, box.keystore).start()
    stop.wait()
    supervisor.stop()


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
