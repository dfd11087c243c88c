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
from provisioning.keystore import FileKeystore, Keystore

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
    passphrase = resolve_passphrase(settings, sys.stdin.isatty() if interactive is None else interactive)
    keystore = FileKeystore.open_or_create(settings.keystore_path, passphrase)
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


def resolve_passphrase(settings: Settings, interactive: bool) -> str:
    """Settings first, then a generated passphrase file (first start, if allowed), then a prompt at a terminal."""
    if settings.keystore_passphrase:
        return settings.keystore_passphrase
    generated = settings.secrets_dir / "passphrase"
    if generated.exists():
        return generated.read_text(encoding="utf-8").strip()
    if settings.keystore_generate_passphrase and not settings.keystore_path.exists():
        _write_private(generated, secrets.token_urlsafe(32))
        log.warning("Generated a keystore passphrase in %s (demo mode). On a clinic box, use a TPM or an operator passphrase.", generated)
        return generated.read_text(encoding="utf-8").strip()
    if interactive:
        return getpass.getpass("Keystore passphrase: ")
    raise KeystoreError(
        "No keystore passphrase. Fix: set MAMMO_KEYSTORE_PASSPHRASE, or run at a terminal to be asked for it."
    )


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
