"""A round's checkpoint on disk: written atomically and durably, checked when read.

File layout: ``MAGIC``, the SHA-256 of the body, the body
(``models.dp.state_to_bytes``). Written to a temporary name, fsync'd,
renamed over the old one and the directory fsync'd
(``edge_agent.ingest.image_store.atomic_write``), so a power cut leaves the
previous checkpoint or the new one, never half of one. A file that fails
the check (truncated, flipped bits, another round's, another model's) is
discarded with its reason logged, and the round starts again from its
first step under the same reservation and seed: nothing it computed before
left the process, so nothing is spent twice (see ``ledger``).

The checkpoint holds weights and optimizer state of the small trainable
part, never an image or a feature.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from edge_agent.errors import StoreError
from edge_agent.ingest.image_store import atomic_write

log = logging.getLogger(__name__)

MAGIC = b"MAMMO-CKPT-1\n"


def path_of(folder: Path, round_id: str) -> Path:
    return folder / f"round-{round_id}.ckpt"


def write(path: Path, body: bytes) -> None:
    atomic_write(path, MAGIC + hashlib.sha256(body).digest() + body)


def read(path: Path) -> tuple[bytes | None, str | None]:
    """(body, None) for a sound checkpoint; (None, reason) when there is none or it was discarded (then it is deleted)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return _discard(path, f"unreadable ({exc})")
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 32:
        return _discard(path, "not a checkpoint (bad header or truncated)")
    digest, body = data[len(MAGIC):len(MAGIC) + 32], data[len(MAGIC) + 32:]
    if hashlib.sha256(body).digest() != digest:
        return _discard(path, "checksum mismatch (damaged or partly written)")
    return body, None


def discard(path: Path, reason: str) -> str:
    return _discard(path, reason)[1] or reason


def _discard(path: Path, reason: str) -> tuple[None, str]:
    log.warning("Discarding training checkpoint %s: %s. The round starts again from its first step (same reservation, same seed).",
                path.name, reason)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreError(f"Cannot remove the damaged checkpoint {path}: {exc}. Fix: remove it by hand.") from exc
    return None, reason


def remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
