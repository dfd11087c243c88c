"""Acknowledged C-STOREs waiting in spool/accepted: recovered at start whatever their number, kept and retried on a box-level failure."""

from __future__ import annotations

from pathlib import Path

from edge_agent.errors import StorageFull
from edge_agent.ingest.accepted import AcceptedSpool, accepted_name, sender_of


class _Service:
    """Stands in for the ingest service (an interface, not a patch): notes each file it is given, fails the first ``fail`` times."""

    parallelism = 1

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.seen: list[tuple[str, bytes, str]] = []

    def ingest_path(self, path: Path, *, source: str, label: str | None = None):
        if self.fail:
            self.fail -= 1
            raise StorageFull("Disk full while writing; nothing was stored. Fix: free disk space.")
        self.seen.append((path.name, path.read_bytes(), source))


def test_more_files_left_by_a_crash_than_the_backlog_are_all_ingested_at_start(tmp_path):
    folder = tmp_path / "accepted"
    folder.mkdir()
    names = [accepted_name("MAMMO_UNIT", now_ns=1_000 + i) for i in range(3)]
    for i, name in enumerate(names):
        (folder / name).write_bytes(b"image %d" % i)
    service = _Service()
    spool = AcceptedSpool(service, folder, backlog=1, threads=1).start()
    try:
        assert spool.recover(wait_s=30) == 3
        assert [n for n, _, _ in service.seen] == names  # in the order they arrived
        assert {s for _, _, s in service.seen} == {"scp:MAMMO_UNIT"} and sender_of(folder / names[0]) == "MAMMO_UNIT"
        assert not list(folder.iterdir())
    finally:
        spool.stop()


def test_a_file_the_box_cannot_store_yet_is_kept_and_retried(tmp_path):
    received = tmp_path / "cstore-MAMMO_UNIT-x.dcm"
    received.write_bytes(b"image")
    service = _Service(fail=1)
    spool = AcceptedSpool(service, tmp_path / "accepted", backlog=2, threads=1).start()
    try:
        kept = spool.accept(received, "MAMMO_UNIT", wait_s=5)
        assert kept is not None and kept.parent == tmp_path / "accepted" and not received.exists()
        assert spool.wait_idle(30)
        assert spool.retried == 1 and [d for _, d, _ in service.seen] == [b"image"] and not kept.exists()
    finally:
        spool.stop()
