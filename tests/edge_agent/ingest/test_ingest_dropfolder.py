"""The drop folder: files are ingested once complete, then removed; events or polling both work."""

from __future__ import annotations

import os
import time

from edge_agent.ingest import mg
from edge_agent.ingest.dropfolder import DropFolderWatcher, scan_once


def _age(path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_settled_files_are_ingested_and_removed(rig, study, tmp_path):
    drop = tmp_path / "drop"
    paths = [mg.write(ds, drop / "USB" / f"{i}.dcm") for i, ds in enumerate(study)]
    (drop / "partial.dcm.part").write_bytes(b"in progress")
    for p in paths[:3]:
        _age(p, 60)
    results = scan_once(rig.service, drop, settle_s=5)
    assert len(results) == 3 and all(r.kept for r in results)
    assert [p.exists() for p in paths] == [False, False, False, True]  # the fresh one waits for the next scan
    assert (drop / "partial.dcm.part").exists()
    _age(paths[3], 60)
    assert len(scan_once(rig.service, drop, settle_s=5)) == 1
    assert len(rig.infer_jobs()) == 1


def test_quarantined_file_leaves_the_drop_folder_too(rig, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    junk = drop / "notes.txt"
    junk.write_text("not an image")
    _age(junk, 60)
    [r] = scan_once(rig.service, drop, settle_s=1)
    assert r.outcome == "quarantined" and not junk.exists()
    assert rig.service.quarantine.entries()[0].reason_code in {"not_dicom", "unreadable", "no_pixel_data", "bad_dimensions"}


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_watcher_picks_up_files_with_events_and_with_polling(rig, study, tmp_path):
    for use_events, ds in ((True, study[0]), (False, study[1])):
        drop = tmp_path / f"drop-{use_events}"
        watcher = DropFolderWatcher(rig.service, drop, poll_s=0.2, use_events=use_events)
        watcher.start()
        try:
            assert watcher.mode == ("events" if use_events else "polling")
            path = mg.write(ds, drop / "img.dcm")
            assert _wait_for(lambda p=path: not p.exists()), f"file not ingested ({watcher.mode})"
        finally:
            watcher.stop()
    assert rig.db.execute("SELECT count(*) FROM ingest_instances").fetchone()[0] == 2
