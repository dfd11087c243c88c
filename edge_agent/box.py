"""Wiring: turns a Settings object into the box's open resources.

This is the one place that decides how the database, the keystore and the
queue are opened for a running box; the CLI, the daemon and the tests all
come through here.
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlite_utils

from edge_agent.errors import KeystoreError
from edge_agent.queue import JobQueue, RetryPolicy
from edge_agent.settings import Settings
from edge_agent.store import open_database
from provisioning.keystore import RECOVERY, FileKeystore, Keystore
from provisioning.protectors import PassphraseProtector, Protector

if TYPE_CHECKING:
    from edge_agent.ingest.pool import IngestPool
    from edge_agent.ingest.work_images import WorkImages

log = logging.getLogger(__name__)


@dataclass
class Box:
    settings: Settings
    db: sqlite_utils.Database
    keystore: Keystore
    queue: JobQueue
    # Set by the ingest service when the daemon starts it; other services (the kiosk upload) prepare files there too.
    ingest_pool: IngestPool | None = None
    # Set by the ingest service too: work images of views it stored, for inference to take instead of decoding again.
    work_images: WorkImages | None = None

    def close(self) -> None:
        self.db.conn.close()


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(settings.queue_max_attempts, settings.queue_backoff_base_s, settings.queue_backoff_cap_s)


def open_box(settings: Settings, *, interactive: bool | None = None) -> Box:
    """Open the database and keystore under ``settings.home``, creating them on first start."""
    make_private(settings.home)
    db = open_database(settings.db_path, max_size_mb=settings.db_max_size_mb)
    keystore = open_keystore(settings, sys.stdin.isatty() if interactive is None else interactive)
    return Box(settings, db, keystore, JobQueue(db, retry_policy(settings)))


def make_private(home: Path) -> None:
    """``MAMMO_HOME`` holds images, identities and keys: only the box's own user may enter it.

    The umask makes everything this process creates private (SQLite gives the WAL and SHM the
    database file's mode).  The chmods fix a home made before, at its top level only: nothing
    below a 0700 folder is reachable by anyone else, and walking every stored image at each
    command would be slow.  chmod works on the path and opens nothing, so it is safe on the
    live database (see ``edge_agent.store``).
    """
    os.umask(0o077)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in (home, *home.iterdir()):
        if not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else 0o600)


def open_keystore(settings: Settings, interactive: bool) -> FileKeystore:
    """Unlock the keystore (the TPM first, then the passphrase, asked only if needed), or create it on first start."""
    if settings.keystore_path.exists():
        protectors: list[Protector] = [PassphraseProtector(lambda: resolve_passphrase(settings, interactive))]
        if settings.keystore_tpm != "off":
            from provisioning.tpm import TpmProtector

            protectors.insert(0, TpmProtector(tcti_of(settings), settings.keystore_tpm_pcrs))
        return FileKeystore.unlock(settings.keystore_path, protectors)
    return FileKeystore.create_protected(settings.keystore_path, creation_protectors(settings, interactive))


def creation_protectors(settings: Settings, interactive: bool, passphrase: str | None = None) -> list[Protector]:
    """The passphrase always (the recovery path), and the TPM where the settings ask for it and the machine has one."""
    protectors: list[Protector] = [PassphraseProtector(passphrase or resolve_passphrase(settings, interactive, confirm=True))]
    if settings.keystore_tpm == "off":
        return protectors
    from provisioning import tpm

    reason = tpm.unavailable(tcti_of(settings))
    if reason and settings.keystore_tpm != "auto":
        raise KeystoreError(f"keystore_tpm is {settings.keystore_tpm!r} but {reason}. Fix: install it, or set keystore_tpm = auto or off.")
    if reason:
        log.info("Keystore without a TPM protector: %s.", reason)
        return protectors
    sealer = tpm.TpmProtector(tcti_of(settings), settings.keystore_tpm_pcrs)
    try:
        sealer.wrap(bytes(32), b"probe")  # a TPM that is there but refuses (permissions) must not stop an `auto` box
    except KeystoreError as exc:
        if settings.keystore_tpm != "auto":
            raise KeystoreError(f"Cannot seal the keystore to the TPM {settings.keystore_tpm}: {exc}. Fix: check the TPM, or set keystore_tpm = off.") from None
        log.warning("Keystore without a TPM protector: %s.", exc)
        return protectors
    return [sealer, *protectors]


def tcti_of(settings: Settings) -> str | None:
    return None if settings.keystore_tpm in ("auto", "off") else settings.keystore_tpm


def demo_passphrase_file(settings: Settings) -> Path:
    return settings.secrets_dir / "passphrase"


def resolve_passphrase(settings: Settings, interactive: bool, *, confirm: bool = False) -> str:
    """Settings first, then (demo mode only) the generated passphrase file, then a prompt at a terminal."""
    if settings.keystore_passphrase:
        return settings.keystore_passphrase
    generated = demo_passphrase_file(settings)
    if not settings.keystore_demo_mode and generated.exists():
        raise KeystoreError(
            f"{generated} holds the keystore passphrase on the disk it protects, and keystore_demo_mode is false: refused. "
            "Fix: run `mammo keys reprotect` at a terminal to set a new passphrase (it destroys that file), "
            "or set keystore_demo_mode = true on a demo box."
        )
    if settings.keystore_demo_mode:
        if generated.exists():
            return generated.read_text(encoding="utf-8").strip()
        if not settings.keystore_path.exists():
            _write_private(generated, secrets.token_urlsafe(32))
            log.warning("Generated a keystore passphrase in %s (demo mode: a stolen disk is readable). "
                        "On a clinic box set keystore_demo_mode = false (see README, Keys and recovery).", generated)
            return generated.read_text(encoding="utf-8").strip()
    if interactive:
        return _ask(confirm)
    raise KeystoreError(
        "No keystore passphrase. Fix: run at a terminal to be asked for it, or set MAMMO_KEYSTORE_PASSPHRASE "
        "(a service's environment, never a file in MAMMO_HOME). " + RECOVERY
    )


def _ask(confirm: bool) -> str:
    first = getpass.getpass("Keystore passphrase: " if not confirm else "New keystore passphrase (keep it off the box; it is the recovery key): ")
    if confirm and getpass.getpass("Again: ") != first:
        raise KeystoreError("The two passphrases differ; nothing was created. Fix: run the command again.")
    if not first:
        raise KeystoreError("An empty keystore passphrase is not allowed. Fix: run the command again and type one.")
    return first


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
