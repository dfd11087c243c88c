"""Shared fixtures: a fresh box home per test, and the ../shared data when it is there."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.box import open_box
from edge_agent.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(env={"MAMMO_HOME": str(tmp_path / "home"), "MAMMO_KEYSTORE_PASSPHRASE": "test-passphrase"})


@pytest.fixture
def box(settings: Settings):
    b = open_box(settings, interactive=False)
    yield b
    b.close()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared/data is absent ({SHARED}); this test needs the shared real-data corpus")
    return SHARED
