"""Renewal at sync: a box near the end of its certificate asks in its answer; the coordinator's authority issues; the box installs.

The exchange is driven through the same functions the ClientApp and the coordinator's loops call, on a real
authority, box keystore and startup kits (the Flower transport itself is covered by test_flower_federation).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from provisioning import enrolment
from sync import box_side
from sync.coordinator import service
from sync.flower.local import BOX_PASSPHRASE, LocalFederation
from sync.flower.protocol import Poll


def _admit(fed: LocalFederation, box_id: str, serial: str) -> None:
    service.write_json(fed.paths.admitted, {"nodes": {serial: {"node_id": 1, "box_id": box_id, "admitted_at": "t"}}, "refused": []})


def test_a_box_renews_its_certificate_at_sync_and_keeps_its_node(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MAMMO_KEYSTORE_PASSPHRASE", BOX_PASSPHRASE)
    fed = LocalFederation.create(tmp_path / "federation", 1)
    try:
        box = fed.boxes[0]
        old = enrolment.installed_kit(box.settings.home / "provisioning")
        assert old is not None
        old_serial = f"{old.certificate.serial_number:x}"
        _admit(fed, box.box_id, old_serial)

        assert box_side.answer(box.home, Poll()).renewal is None  # 30 days left, renewal at 7
        monkeypatch.setenv("MAMMO_SYNC_RENEW_DAYS", "30")
        asked = box_side.answer(box.home, Poll())
        assert asked.renewal is not None and "BEGIN CERTIFICATE REQUEST" in asked.renewal["csr"]

        request, kit_path = service.renewal_paths(fed.paths, box.box_id)
        request.parent.mkdir(parents=True, exist_ok=True)
        service.write_json(request, asked.renewal)  # what the ServerApp does with the answer
        assert service.issue_renewals(fed.paths, fed.auth, now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)) == [box.box_id]

        renewed = box_side.answer(box.home, Poll(kit=kit_path.read_bytes()))
        serial = x509.load_pem_x509_certificate(renewed.certificate.encode()).serial_number
        assert f"{serial:x}" != old_serial
        new = enrolment.installed_kit(box.settings.home / "provisioning")
        assert new is not None and new.certificate.serial_number == serial and new.not_after > old.not_after
        assert box.db.execute("SELECT count(*) FROM audit_log WHERE action = 'sync_certificate_renewed'").fetchone()[0] == 1
        # The renewed certificate certifies the same key: the SuperLink keeps the box's node, nothing to register again.
        fed.auth._reload()
        plan = service.admission_plan(fed.auth.meta["issued"], fed.auth.ca, fed.auth.crl(), dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5),
                                      service.read_admitted(fed.paths))
        assert plan.register == () and plan.unregister == ()
    finally:
        fed.close()


def test_a_revoked_box_gets_no_renewal(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MAMMO_KEYSTORE_PASSPHRASE", BOX_PASSPHRASE)
    monkeypatch.setenv("MAMMO_SYNC_RENEW_DAYS", "30")
    fed = LocalFederation.create(tmp_path / "federation", 1)
    try:
        box = fed.boxes[0]
        old = enrolment.installed_kit(box.settings.home / "provisioning")
        assert old is not None
        _admit(fed, box.box_id, f"{old.certificate.serial_number:x}")
        asked = box_side.answer(box.home, Poll())
        fed.auth.revoke(box.box_id)
        request, kit_path = service.renewal_paths(fed.paths, box.box_id)
        request.parent.mkdir(parents=True, exist_ok=True)
        service.write_json(request, asked.renewal or {})
        assert service.issue_renewals(fed.paths, fed.auth) == []
        assert not kit_path.exists() and not request.exists()
    finally:
        fed.close()
