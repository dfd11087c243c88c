"""Fixtures shared by the box's test folders: one copy of the shipped model release per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.release_files import default_release_dir
from models.selftest import SELFTEST_FILE, build_selftest


@pytest.fixture(scope="session")
def shipped_dir(tmp_path_factory) -> Path:
    """A folder shaped like models/release holding a copy of the newest shipped release."""
    root = tmp_path_factory.mktemp("release")
    src = default_release_dir()
    dst = root / src.name
    shutil.copytree(src, dst)
    if not (dst / SELFTEST_FILE).exists():
        build_selftest(dst)
    return root
