"""Research exports cannot be linked to the box or to each other, unless the operator keeps a key to link them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pydicom
import pytest

from edge_agent.cli import EXIT_FAILED, main
from edge_agent.ingest import mg
from edge_agent.settings import Settings
from edge_agent.store import open_database


@pytest.fixture
def usb(tmp_path: Path, monkeypatch, study) -> Path:
    monkeypatch.setenv("MAMMO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAMMO_KEYSTORE_PASSPHRASE", "cli test passphrase")
    folder = tmp_path / "usb"
    for i, ds in enumerate(study):
        mg.write(ds, folder / f"IMG{i}.dcm")
    return folder


def _export(capsys, usb: Path, dst: Path, *extra: str) -> dict[str, str]:
    assert main(["deid", str(usb), str(dst), *extra, "--json"]) == 0
    capsys.readouterr()
    ds = pydicom.dcmread(sorted(dst.rglob("*.dcm"))[0])
    return {"study_uid": ds.StudyInstanceUID, "patient_id": str(ds.PatientID), "study_date": str(ds.StudyDate)}


def test_exports_match_neither_the_box_nor_each_other_unless_a_key_is_kept(tmp_path: Path, usb: Path, capsys):
    main(["ingest", str(usb), "--json"])
    capsys.readouterr()
    home = tmp_path / "home"
    db = open_database(Settings.load(env={"MAMMO_HOME": str(home)}, home=home).db_path)
    box_uid, box_pseudonym = db.execute("SELECT study_uid, pseudonym FROM ingest_studies").fetchone()

    first = _export(capsys, usb, tmp_path / "a")
    second = _export(capsys, usb, tmp_path / "b")
    assert first["study_uid"] != box_uid and first["patient_id"] != box_pseudonym  # the box cannot re-identify it
    assert first["study_uid"] != second["study_uid"] and first["patient_id"] != second["patient_id"]  # nor join two exports

    key = tmp_path / "follow-up.key"
    kept = _export(capsys, usb, tmp_path / "c", "--keep-key", str(key))
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    linked = _export(capsys, usb, tmp_path / "d", "--key", str(key))
    assert linked == kept and kept["patient_id"] not in (first["patient_id"], box_pseudonym)
    assert main(["deid", str(usb), str(tmp_path / "e"), "--keep-key", str(key)]) == EXIT_FAILED  # a kept key is never overwritten
    assert "never overwritten" in capsys.readouterr().err

    exports = [json.loads(r[0]) for r in db.execute("SELECT details FROM audit_log WHERE action = 'research_export' ORDER BY seq")]
    assert [e["key"] for e in exports] == ["discarded", "discarded", "kept", "reused"]
    assert exports[2]["key_id"] == exports[3]["key_id"] and len({e["key_id"] for e in exports}) == 3
    assert key.read_text().strip() not in json.dumps(exports)
    db.conn.close()
    os.unlink(key)
