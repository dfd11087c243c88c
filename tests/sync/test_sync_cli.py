"""`mammo sync status`, `mammo coordinator status`, and the admission rule that turns the CRL into the SuperLink's accepted keys."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edge_agent.box import open_box
from edge_agent.cli import main
from edge_agent.settings import Settings
from provisioning.authority import Authority
from provisioning.keystore import KdfParams
from provisioning.kit import SigningKey, verify_release
from provisioning.pki import make_csr, new_box_key
from sync import outbox
from sync.coordinator import service
from sync.update import LocalUpdate, TrainableSpec

FAST = KdfParams(time_cost=1, memory_kib=8 * 1024)
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _request() -> bytes:
    return make_csr(new_box_key(), str(uuid.uuid4())).public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", "federation-passphrase", kdf=FAST, now=NOW)


def _plan(auth: Authority, admitted: dict[str, service.Admitted], now: dt.datetime = NOW) -> service.AdmissionPlan:
    auth._reload()
    return service.admission_plan(auth.meta["issued"], auth.ca, auth.crl(), now, admitted)


def test_admission_registers_current_boxes_and_withdraws_a_revoked_one(authority: Authority) -> None:
    for _ in range(2):
        authority.issue_kit(_request(), coordinator="127.0.0.1:9092", now=NOW)
    plan = _plan(authority, {})
    assert len(plan.register) == 2 and not plan.unregister and not plan.refused
    admitted = {serial: service.Admitted(i + 1, box, serial, "t") for i, (box, serial, _) in enumerate(plan.register)}
    assert _plan(authority, admitted).register == ()  # nothing to do once admitted

    revoked_box = plan.register[0][0]
    authority.revoke(revoked_box, now=NOW)
    after = _plan(authority, admitted)
    assert [n.box_id for n, _ in after.unregister] == [revoked_box]
    assert [r[0] for r in after.refused] == [revoked_box] and "revoked" in after.refused[0][2]
    assert after.register == ()


def test_admission_refuses_an_expired_certificate(authority: Authority) -> None:
    authority.issue_kit(_request(), days=1, now=NOW)
    later = _plan(authority, {}, now=NOW + dt.timedelta(days=2))
    assert later.register == () and "expired" in later.refused[0][2]


def test_sync_status_of_a_box_says_why_sync_is_off_and_what_waits(tmp_path: Path, monkeypatch, capsys) -> None:
    home = tmp_path / "box"
    monkeypatch.setenv("MAMMO_HOME", str(home))
    monkeypatch.setenv("MAMMO_KEYSTORE_PASSPHRASE", "cli test passphrase")
    box = open_box(Settings.load(), interactive=False)
    try:
        spec = TrainableSpec(("head.bias",), ((2,),))
        import numpy as np

        outbox.place_update(box.db, home, LocalUpdate("u1", "0.1.0", spec, np.ones(2, np.float32), 12, 0.4, 1e-5, 1.1), keystore=box.keystore)
    finally:
        box.close()
    assert main(["sync", "status", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["enabled"] is False and "startup kit" in out["reason"]
    assert out["pending"] == 1 and out["outbox"]["counts"]["awaiting_kit"] == 1
    assert out["last_sync_at"] is None

    (home / "sync").mkdir(exist_ok=True)
    (home / "sync" / "link.json").write_text(json.dumps({"last_contact_at": 1796050000.0, "model_version": "0.1.0+fl.2"}))
    main(["sync", "status", "--json"])
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["last_sync_at"] == 1796050000.0 and out["model_version"] == "0.1.0+fl.2"


def test_coordinator_status_lists_admitted_clinics_rounds_and_the_base_release(tmp_path: Path, authority: Authority, monkeypatch, capsys) -> None:
    from sync.flower.local import BASE_RELEASE

    home = tmp_path / "coordinator"
    box_id = str(uuid.uuid4())
    service.prepare(home, authority, BASE_RELEASE, ["127.0.0.1"])
    service.write_json(home / "admitted.json", {"nodes": {"ab12": {"node_id": 7, "box_id": box_id, "admitted_at": "2026-11-30T10:00:00+00:00"}}, "refused": []})
    service.write_json(home / "links.json", {"connected": [box_id], "boxes": {box_id: {"last_contact_at": 1796050000.0, "model_version": "0.1.0",
                                                                                         "outbox": {"pending": 2}}}})
    monkeypatch.setenv("MAMMO_COORDINATOR_HOME", str(home))
    assert main(["coordinator", "status", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["running"] is False and out["base_version"] == "0.1.0" and out["current_version"] == "0.1.0"
    assert out["releases"][0]["generation"] == 0 and out["rounds"] == [] and out["pending_updates"] == 0
    [clinic] = out["clinics"]
    assert clinic["box_id"] == box_id and clinic["connected"] is True and clinic["pending_on_box"] == 2 and clinic["node_id"] == 7
    # The base release the coordinator offers is signed by the federation, with the files boxes receive and no TFLite.
    base = home / "releases" / "0.1.0"
    assert (base / "manifest.sig").exists() and not (base / "model_int8.tflite").exists()
    signing = SigningKey(1, (authority.folder / "signing-v1.pub.pem").read_text(), "active", None)
    signature = base64.b64decode((base / "manifest.sig").read_text())
    assert verify_release((signing,), signature, (base / "manifest.json").read_bytes(), NOW) == 1


def test_the_daemon_starts_no_supernode_without_a_kit_or_with_sync_disabled(tmp_path: Path, monkeypatch, caplog) -> None:
    import logging
    import threading

    from sync.service import start_services

    monkeypatch.setenv("MAMMO_HOME", str(tmp_path / "box"))
    monkeypatch.setenv("MAMMO_KEYSTORE_PASSPHRASE", "cli test passphrase")
    box = open_box(Settings.load(), interactive=False)
    try:
        with caplog.at_level(logging.INFO, logger="sync.service"):
            assert start_services(box, threading.Event()) == []
        assert "no startup kit" in caplog.text
        box.settings = Settings.load(sync_enabled=False)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sync.service"):
            assert start_services(box, threading.Event()) == []
        assert "sync_enabled is false" in caplog.text
    finally:
        box.close()
