"""The drop folder: files are ingested once complete, then removed; events or polling both work."""

from __future__ import annotations

import os
import time

from edge_agent.ingest import mg
from edge_agent.ingest.dropfolder import DropFolder, DropFolderWatcher


def _age(path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_settled_files_are_ingested_and_removed(rig, study, tmp_path):
    drop = tmp_path / "drop"
    scanner = DropFolder(rig.service, drop, settle_s=5)
    paths = [mg.write(ds, drop / "USB" / f"{i}.dcm") for i, ds in enumerate(study[:3])]
    (drop / "partial.dcm.part").write_bytes(b"in progress")
    assert scanner.scan(now=100) == []  # first look: nothing is known to be complete yet
    late = mg.write(study[3], drop / "USB" / "3.dcm")
    results = scanner.scan(now=105)
    assert len(results) == 3 and all(r.kept for r in results)
    assert [p.exists() for p in paths + [late]] == [False, False, False, True]  # the newcomer waits its settle period
    assert (drop / "partial.dcm.part").exists()
    assert len(scanner.scan(now=110)) == 1
    assert len(rig.infer_jobs()) == 1


def test_a_file_still_growing_is_not_read_even_with_an_old_mtime(rig, study, tmp_path):
    """A copy that keeps the original's mtime (cp -p, rsync -t) still changes size while it runs."""
    drop = tmp_path / "drop"
    scanner = DropFolder(rig.service, drop, settle_s=5)
    whole = mg.to_bytes(study[0])
    path = drop / "copying.dcm"
    drop.mkdir()
    path.write_bytes(whole[: len(whole) // 2])
    _age(path, 3600)
    assert scanner.scan(now=100) == []
    with path.open("ab") as fh:
        fh.write(whole[len(whole) // 2:])
    _age(path, 3600)  # same old mtime, new size
    assert scanner.scan(now=105) == [] and path.exists()  # changed since the last look: not settled
    assert [r.outcome for r in scanner.scan(now=110)] == ["accepted"] and not path.exists()
    assert rig.service.quarantine.entries() == []  # never read half-written


def test_folders_named_after_the_patient_are_removed_once_emptied(rig, study, tmp_path):
    drop = tmp_path / "drop"
    scanner = DropFolder(rig.service, drop, settle_s=5)
    series = drop / "CELIK AYSE 1975" / "DICOM" / "ST000001"
    images = [mg.write(ds, series / f"IM{i}") for i, ds in enumerate(study)]
    (drop / "CELIK AYSE 1975" / "DICOMDIR").write_bytes(b"names of patients")
    (drop / "CELIK AYSE 1975" / ".DS_Store").write_bytes(b"finder")
    (drop / "YILMAZ FATMA" / "empty").mkdir(parents=True)  # an empty folder, copied as is
    (drop / "OZTURK ZEYNEP").mkdir()
    (drop / "OZTURK ZEYNEP" / "IM0.part").write_bytes(b"a copy still running")
    scanner.scan(now=100)
    assert len(scanner.scan(now=105)) == 4 and not any(p.exists() for p in images)
    assert not (drop / "CELIK AYSE 1975" / "DICOMDIR").exists()
    scanner.scan(now=110)  # emptied at 105: gone after a settle period of staying empty
    assert sorted(p.name for p in drop.iterdir()) == ["OZTURK ZEYNEP"]  # a folder with a file in progress stays
    assert drop.is_dir()  # never the drop folder itself


def test_a_folder_just_created_by_a_copy_gets_its_settle_period(rig, tmp_path):
    drop = tmp_path / "drop"
    scanner = DropFolder(rig.service, drop, settle_s=5)
    drop.mkdir()
    scanner.scan(now=100)
    (drop / "NEW").mkdir()  # the copy made the folder and has not written into it yet
    scanner.scan(now=104)
    assert (drop / "NEW").is_dir()
    scanner.scan(now=109)
    assert not (drop / "NEW").exists()


def test_quarantined_file_leaves_the_drop_folder_too(rig, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    junk = drop / "notes.txt"
    junk.write_text("not an image")
    scanner = DropFolder(rig.service, drop, settle_s=1)
    assert scanner.scan(now=0) == []
    [r] = scanner.scan(now=1)
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
            path = mg.write(ds, drop / "PATIENT NAME" / "img.dcm")
            assert _wait_for(lambda p=path: not p.exists()), f"file not ingested ({watcher.mode})"
            assert _wait_for(lambda p=path.parent: not p.exists()), f"folder not removed ({watcher.mode})"
        finally:
            watcher.stop()
    assert rig.db.execute("SELECT count(*) FROM ingest_instances").fetchone()[0] == 2
