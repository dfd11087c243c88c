"""CLI commands that touch patient files leave entries in the audit trail, which names no patient."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent import audit
from edge_agent.cli import main
from edge_agent.ingest import mg
from edge_agent.settings import Settings
from edge_agent.store import open_database


def test_quarantine_release_purge_and_research_export_are_audited(tmp_path: Path, monkeypatch, capsys, study):
    home = tmp_path / "home"
    monkeypatch.setenv("MAMMO_HOME", str(home))
    monkeypatch.setenv("MAMMO_KEYSTORE_PASSPHRASE", "cli test passphrase")
    usb = tmp_path / "usb" / "ÇELİK AYŞE"
    for i, ds in enumerate(study):
        mg.write(ds, usb / f"IMG{i}.dcm")
    (usb / "README.txt").write_text("not dicom")
    main(["ingest", str(usb), "--json"])
    capsys.readouterr()
    main(["quarantine", "list", "--json"])
    qid = json.loads(capsys.readouterr().out.splitlines()[-1])["entries"][0]["id"]
    main(["quarantine", "release", str(qid), "--json"])
    main(["quarantine", "purge", str(qid), "--json"])
    main(["deid", str(usb), str(tmp_path / "export"), "--json"])
    capsys.readouterr()

    db = open_database(Settings.load(env={"MAMMO_HOME": str(home)}, home=home).db_path)
    try:
        trail = [(e.action, json.loads(e.details)) for e in audit.entries(db)]
        assert [a for a, _ in trail] == ["quarantine_release", "quarantine_purge", "research_export"]
        assert trail[0][1] == {"ids": [qid], "outcomes": ["quarantined"]} and trail[1][1] == {"ids": [qid]}
        assert trail[2][1]["files"] == 5 and trail[2][1]["dst"] == "export" and trail[2][1]["key"] == "discarded"
        assert "ÇELİK" not in json.dumps(db.execute("SELECT * FROM audit_log").fetchall(), ensure_ascii=False)
        assert audit.verify(db).ok
    finally:
        db.conn.close()
