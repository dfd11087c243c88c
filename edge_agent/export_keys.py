"""Keys for research exports (``mammo deid``): one fresh key per export, never the box's own.

De-identified with the box's own secrets, an export's pseudonyms, UIDs and
date shifts would equal the ones the box stores, so the box (which keeps
the sealed pseudonym -> identity map) could re-identify every woman in it,
and two exports given to two studies could be joined.  Each export
therefore draws a random 32-byte key from which its three de-identification
secrets are derived; the key lives in memory for the export and is then
gone, unless the operator keeps it (``--keep-key FILE``) to give a later
export the same pseudonyms (``--key FILE``), for a follow-up of the same
women.  The audit trail records each export with the key's id (a hash that
reveals nothing of the key), so an inspector sees which exports can be
linked.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from edge_agent.errors import KeystoreError
from edge_agent.ingest.deid import DeidKeys

KEY_BYTES = 32
_PURPOSES = ("uid-remap", "date-shift", "pseudonym")  # the same purposes the box's keystore derives its own secrets for


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def deid_keys(key: bytes, max_shift_days: int) -> DeidKeys:
    """The export's three de-identification secrets, each an HMAC of its purpose under the export key (pure)."""
    uid, date, pseudonym = (hmac.new(key, b"mammo-research-export/" + p.encode("ascii"), hashlib.sha256).digest() for p in _PURPOSES)
    return DeidKeys(uid, date, pseudonym, max_shift_days)


def key_id(key: bytes) -> str:
    """A name for the key that reveals nothing of it: exports with the same id share pseudonyms."""
    return hashlib.sha256(b"mammo-research-export-id/" + key).hexdigest()[:16]


def write_key(path: Path, key: bytes) -> None:
    """Keep the key in a new file only the box's user can read; never overwrites one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeystoreError(f"{path} already exists; an export key is never overwritten. Fix: choose another file name.") from None
    except OSError as exc:
        raise KeystoreError(f"Cannot write the export key to {path}: {exc.strerror}. Fix: choose a writable folder.") from None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_key(path: Path) -> bytes:
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise KeystoreError(f"Cannot read an export key from {path} ({exc}). Fix: give the file `mammo deid --keep-key` wrote.") from None
    if len(key) != KEY_BYTES:
        raise KeystoreError(f"{path} does not hold a {KEY_BYTES}-byte export key. Fix: give the file `mammo deid --keep-key` wrote.")
    return key
