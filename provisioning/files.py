"""Private folders and atomic file replacement for provisioning state.

Enrolment material is replaced whole or not at all: a half-written kit or
revocation list must never be what a box or the coordinator reads after a
power cut.  Every write goes to a temporary file in the same folder, is
fsync'd, renamed over the target, and the folder is fsync'd so the rename
itself survives.
"""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as 0700; fix the mode of an existing one."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (0600) so a reader sees the old bytes or the new, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` atomically; raises FileExistsError rather than overwrite (keys are never replaced silently)."""
    if path.exists():
        raise FileExistsError(path)
    write_atomic(path, data)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
