"""Wiring: the box's home is private to the box's own user."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edge_agent.box import open_box
from edge_agent.settings import Settings


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_a_home_made_with_open_modes_becomes_private_and_stays_so(tmp_path: Path):
    home = tmp_path / "home"
    (home / "drop").mkdir(parents=True, mode=0o755)
    (home / "mammo.toml").write_text('box_name = "test"\n')
    os.chmod(home, 0o755)
    os.chmod(home / "mammo.toml", 0o644)
    old_umask = os.umask(0o022)
    try:
        settings = Settings.load(env={"MAMMO_HOME": str(home), "MAMMO_KEYSTORE_PASSPHRASE": "test-passphrase"})
        box = open_box(settings, interactive=False)
        box.queue.enqueue("infer", {"n": 1})  # the WAL and SHM exist now
        (home / "images" / "ab").mkdir(parents=True)  # created later, as the services do
        (home / "images" / "ab" / "blob").write_bytes(b"x")
        modes = _modes(home)
        box.close()
    finally:
        os.umask(old_umask)
    assert {"box.sqlite3", "box.sqlite3-wal", "box.sqlite3-shm", "keystore.json", "drop"} <= set(modes)
    folders = {name for name in modes if (home / name).is_dir()}
    assert {name: mode for name, mode in modes.items() if name in folders and mode != 0o700} == {}
    assert {name: mode for name, mode in modes.items() if name not in folders and mode != 0o600} == {}
