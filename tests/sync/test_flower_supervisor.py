"""The box's SuperNode supervision: "sync now" from the console reconnects at once; a SuperNode that exits is started again."""

from __future__ import annotations

from pathlib import Path

from edge_agent.sync_view import SYNC_NOW_FILE, request_sync_now
from sync.flower import processes
from sync.flower.local import BOX_PASSPHRASE, LocalFederation, wait_for
from sync.service import Supervisor


def test_sync_now_restarts_a_supernode_that_waits_for_its_link(tmp_path: Path) -> None:
    fed = LocalFederation.create(tmp_path / "federation", 1)
    box = fed.boxes[0]
    nowhere = f"127.0.0.1:{processes.free_port()}"  # no coordinator listens: the SuperNode sits in Flower's retry back-off
    sup = Supervisor(box.settings, box.keystore, superlink=nowhere, env={"MAMMO_KEYSTORE_PASSPHRASE": BOX_PASSPHRASE}, min_delay=1.0).start()
    try:
        wait_for("the SuperNode to run", sup.alive, 60)
        assert sup.starts == 1
        key = box.home / "sync" / "supernode-key"
        assert key.stat().st_mode & 0o777 == 0o600  # the box's enrolment key, only while the SuperNode runs
        request_sync_now(box.home)
        wait_for("a fresh SuperNode", lambda: sup.starts == 2 and sup.alive(), 60)
        assert not (box.home / "sync" / SYNC_NOW_FILE).exists()
        assert sup.exits == []  # restarted on request, not because it died
    finally:
        sup.stop()
        fed.close()
    assert not (box.home / "sync" / "supernode-key").exists()
