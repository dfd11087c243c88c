"""`mammo ingest`, `mammo deid`, `mammo quarantine ...` and `mammo bench ingest` as a technician runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from edge_agent.cli import EXIT_OK, EXIT_REFUSED, main
from edge_agent.ingest import mg


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MAMMO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAMMO_KEYSTORE_PASSPHRASE", "cli test passphrase")
    return tmp_path / "home"


def _run(capsys, *argv: str) -> tuple[int, dict, str]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out.strip().splitlines()[-1]), out


def _usb(tmp_path: Path, study) -> Path:
    folder = tmp_path / "usb" / "ÇELİK AYŞE"
    for i, ds in enumerate(study):
        mg.write(ds, folder / f"IMG{i}.dcm")
    (folder / "README.txt").write_text("not dicom")
    return folder


def test_ingest_reports_each_file_and_quarantine_commands_work(home, tmp_path, capsys, study):
    folder = _usb(tmp_path, study)
    code, payload, _ = _run(capsys, "ingest", str(folder), "--json")
    assert code == EXIT_REFUSED  # finished, one file refused
    assert payload["counts"] == {"accepted": 4, "fixed": 0, "quarantined": 1}
    assert sum(1 for r in payload["results"] if r["infer_job_id"]) == 1
    [refused] = [r for r in payload["results"] if r["outcome"] == "quarantined"]
    assert refused["label"].endswith("README.txt") and refused["reason"]

    code, listing, _ = _run(capsys, "quarantine", "list", "--json")
    assert code == EXIT_OK and listing["count"] == 1
    qid = listing["entries"][0]["id"]
    code, shown, _ = _run(capsys, "quarantine", "show", str(qid), "--json")
    assert shown["reason_code"] == refused["reason_code"] and shown["status"] == "held"
    code, released, _ = _run(capsys, "quarantine", "release", str(qid), "--json")
    assert code == EXIT_REFUSED and released["released"] == 0  # a text file stays refused
    code, purged, _ = _run(capsys, "quarantine", "purge", str(qid), "--json")
    assert code == EXIT_OK and purged["purged"] == [qid]
    assert _run(capsys, "quarantine", "list", "--json")[1]["count"] == 0


def test_text_output_names_outcomes_and_fixes(home, tmp_path, capsys, study):
    ds = study[0]
    del ds.ImageLaterality
    path = mg.write(ds, tmp_path / "one.dcm")
    code = main(["ingest", str(path)])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert out.startswith("fixed") and "ImageLaterality=R from SeriesDescription; the tag was missing." in out


def test_deid_writes_deidentified_files_named_by_new_uids(home, tmp_path, capsys, study):
    src = _usb(tmp_path, study)
    dst = tmp_path / "export"
    code, payload, _ = _run(capsys, "deid", str(src), str(dst), "--json")
    assert code == EXIT_REFUSED and payload["written"] == 4 and payload["refused"] == 1
    files = sorted(dst.rglob("*.dcm"))
    assert len(files) == 4
    for f in files:
        assert "ÇELİK" not in str(f.relative_to(dst))
        ds = pydicom.dcmread(f)
        assert ds.PatientIdentityRemoved == "YES" and "ÇELİK" not in str(ds.PatientName)
        assert f.stem == ds.SOPInstanceUID


def test_bench_ingest_prints_side_by_side_figures(home, tmp_path, capsys, study):
    corpus = tmp_path / "corpus"
    for i, ds in enumerate(study):
        mg.write(ds, corpus / f"{i}.dcm")
    code, result, _ = _run(capsys, "bench", "ingest", "--corpus", str(corpus), "--rounds", "2", "--workers", "2", "--json")
    assert code == EXIT_OK and result["files"] == 4 and result["workers"] == 2 and len(result["rounds"]["ours_files_per_s"]) == 2
    assert result["ours"]["files_per_s"] > 0 and result["outcomes"] == {"accepted": 4}
    assert {p["name"].split(":")[0] for p in result["peers"]} == {"dicognito", "pydicom/deid"}
    assert set(result["ratios"]) == {"dicognito", "pydicom/deid"}


def test_missing_path_is_reported_and_the_rest_still_ingested(home, tmp_path, capsys, study):
    good = mg.write(study[0], tmp_path / "good.dcm")
    code, payload, _ = _run(capsys, "ingest", str(tmp_path / "missing.dcm"), str(good), "--json")
    assert code == 1
    assert payload["counts"]["accepted"] == 1 and payload["errors"][0]["label"].endswith("missing.dcm")


@pytest.mark.parametrize("zone", ["Europe/Istanbul", "Asia/Tokyo"])
def test_quarantine_times_are_printed_in_the_clinic_zone_not_the_box_clock_zone(home, tmp_path, capsys, monkeypatch, zone):
    import datetime as dt
    import time
    from zoneinfo import ZoneInfo

    monkeypatch.setenv("TZ", "UTC")  # the box's clock, as shipped
    time.tzset()
    monkeypatch.setenv("MAMMO_TIMEZONE", zone)
    try:
        (tmp_path / "bad.dcm").write_bytes(b"not a DICOM file")
        _run(capsys, "ingest", str(tmp_path / "bad.dcm"), "--json")
        _, listing, _ = _run(capsys, "quarantine", "list", "--json")
        received = listing["entries"][0]["received_at"]
        main(["quarantine", "list"])
        text = capsys.readouterr().out
        assert dt.datetime.fromtimestamp(received, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M") in text
        assert dt.datetime.fromtimestamp(received, dt.UTC).strftime("%Y-%m-%d %H:%M") not in text  # UTC is 3 h (or 9 h) away
    finally:
        monkeypatch.undo()
        time.tzset()
