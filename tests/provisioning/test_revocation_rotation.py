"""Revocation (the coordinator's check at connection) and rotation of the HE context and the model-signing key."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import tenseal as ts
from cryptography import x509

from edge_agent.errors import PeerRefused, ProvisioningError
from provisioning import enrolment
from provisioning.authority import Authority
from provisioning.keystore import FileKeystore, KdfParams
from provisioning.kit import parse_kit, verify_release
from provisioning.pki import cert_pem
from provisioning.revocation import check_peer

FAST = KdfParams(time_cost=1, memory_kib=8 * 1024)
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", "federation-pw", kdf=FAST, now=NOW)


def _request(home: Path) -> tuple[FileKeystore, bytes]:
    ks = FileKeystore.create(home / "keystore.json", "box-pw", FAST)
    return ks, enrolment.make_request(ks, home / "provisioning")


def _cert(kit: bytes) -> bytes:
    return cert_pem(parse_kit(kit).certificate).encode()


def test_check_peer_admits_a_current_box_and_refuses_it_once_revoked(authority: Authority, tmp_path: Path):
    ks, request = _request(tmp_path / "box")
    cert = _cert(authority.issue_kit(request, now=NOW))
    check_peer(cert, authority.ca, authority.crl(), NOW)  # admitted
    serials = Authority.open(authority.folder, "federation-pw").revoke(ks.box_id, now=NOW + DAY)
    crl = x509.load_pem_x509_crl((authority.folder / "crl.pem").read_bytes())  # what the coordinator reloads
    assert [f"{r.serial_number:x}" for r in crl] == serials
    with pytest.raises(PeerRefused, match="revoked"):
        check_peer(cert, authority.ca, crl, NOW + DAY)
    assert json.loads((authority.folder / "authority.json").read_text())["revoked"][0]["box_id"] == ks.box_id
    with pytest.raises(ProvisioningError, match="was revoked"):
        authority.issue_kit(request, now=NOW + DAY)


def test_check_peer_refuses_foreign_expired_and_not_yet_valid_certificates(authority: Authority, tmp_path: Path):
    _, request = _request(tmp_path / "box")
    other = Authority.init(tmp_path / "other", "other-federation", kdf=FAST, now=NOW)
    crl = authority.crl()
    with pytest.raises(PeerRefused, match="another authority"):
        check_peer(_cert(other.issue_kit(request, now=NOW)), authority.ca, crl, NOW)
    cert = _cert(authority.issue_kit(request, days=10, now=NOW))
    with pytest.raises(PeerRefused, match="expired"):
        check_peer(cert, authority.ca, authority.crl(), NOW + 11 * DAY)
    with pytest.raises(PeerRefused, match="valid only from"):
        check_peer(cert, authority.ca, authority.crl(), NOW - DAY)
    with pytest.raises(PeerRefused, match="no readable certificate"):
        check_peer(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", authority.ca, crl, NOW)


def test_check_peer_fails_closed_on_a_stale_or_foreign_revocation_list(authority: Authority, tmp_path: Path):
    _, request = _request(tmp_path / "box")
    stale = authority.crl()  # signed at NOW, next update due NOW + 30 days
    assert stale.next_update_utc == NOW + 30 * DAY
    cert = _cert(authority.issue_kit(request, now=NOW + 5 * DAY))  # valid until NOW + 35 days
    other = Authority.init(tmp_path / "other", "other-federation", kdf=FAST, now=NOW)
    with pytest.raises(PeerRefused, match="not signed by this federation"):
        check_peer(cert, authority.ca, other.crl(), NOW + 6 * DAY)
    check_peer(cert, authority.ca, stale, NOW + 6 * DAY)
    with pytest.raises(PeerRefused, match="revocation list expired"):
        check_peer(cert, authority.ca, stale, NOW + 31 * DAY)
    authority.refresh_crl(now=NOW + 31 * DAY)
    check_peer(cert, authority.ca, authority.crl(), NOW + 31 * DAY)


def test_rotating_the_signing_key_retires_the_old_one_for_new_signatures_but_not_for_old_releases(authority: Authority, tmp_path: Path):
    _, request = _request(tmp_path / "box")
    manifest_v1 = b'{"version": "0.1.0"}'
    v, old_signature = authority.sign(manifest_v1)
    assert v == 1
    assert authority.rotate("signing", verify_days=90, now=NOW) == 2
    reopened = Authority.open(authority.folder, "federation-pw")
    version, new_signature = reopened.sign(b'{"version": "0.2.0"}')
    assert version == 2
    with pytest.raises(ProvisioningError, match="retired"):
        reopened.signing_key(1)
    keys = parse_kit(reopened.issue_kit(request, now=NOW + DAY)).signing_keys
    assert [(k.version, k.status) for k in keys] == [(1, "retired"), (2, "active")]
    assert verify_release(keys, new_signature, b'{"version": "0.2.0"}', NOW + DAY) == 2
    assert verify_release(keys, old_signature, manifest_v1, NOW + 89 * DAY) == 1  # an old release still verifies
    with pytest.raises(ProvisioningError, match="retired past their verify-until date"):
        verify_release(keys, old_signature, manifest_v1, NOW + 91 * DAY)
    with pytest.raises(ProvisioningError, match="does not verify"):
        verify_release(keys, new_signature, b'{"version": "0.2.1"}', NOW + DAY)
    # Past its verify-until date, a retired key is no longer handed to new boxes at all.
    late = parse_kit(reopened.issue_kit(request, now=NOW + 91 * DAY)).signing_keys
    assert [k.version for k in late] == [2]


def test_rotating_the_he_context_gives_new_kits_the_new_version_and_keeps_the_old_dated(authority: Authority, tmp_path: Path):
    ks, request = _request(tmp_path / "box")
    home = tmp_path / "box"
    enrolment.install(authority.issue_kit(request, now=NOW), keystore=ks, folder=home / "provisioning", now=NOW)
    old_sha = enrolment.status(home / "provisioning", None, now=NOW)["he_context_sha256"]
    assert authority.rotate("he", verify_days=14, now=NOW) == 2
    meta = json.loads((authority.folder / "authority.json").read_text())
    assert [(e["version"], e["status"]) for e in meta["he"]] == [(1, "retired"), (2, "active")]
    assert meta["he"][0]["usable_until"].startswith((NOW + 14 * DAY).date().isoformat())
    enrolment.install(authority.issue_kit(request, now=NOW + DAY), keystore=ks, folder=home / "provisioning", now=NOW + DAY)
    st = enrolment.status(home / "provisioning", None, now=NOW + DAY)
    assert st["he_version"] == 2 and st["he_context_sha256"] == meta["he"][1]["secret_sha256"] != old_sha
    # The coordinator's public context of v2 adds what the box encrypts under its new secret context.
    clinic = ts.context_from(enrolment.he_secret_context(ks, home / "provisioning"))
    coordinator = ts.context_from(authority.he_public_context())
    total = ts.ckks_vector_from(coordinator, ts.ckks_vector(clinic, [1.0, 2.0]).serialize()) * 2
    assert ts.ckks_vector_from(clinic, total.serialize()).decrypt() == pytest.approx([2.0, 4.0], abs=1e-3)
    assert authority.he_public_context(1) == (authority.folder / "he-v1.public.tenseal").read_bytes()  # kept for rounds in flight
    with pytest.raises(ProvisioningError, match="past its usable-until date"):
        authority.he_public_context(1, now=NOW + 15 * DAY)
    with pytest.raises(ProvisioningError, match="Cannot rotate"):
        authority.rotate("ca", now=NOW)


def test_an_edited_revocation_record_is_detected_before_anything_is_signed(authority: Authority, tmp_path: Path):
    ks, request = _request(tmp_path / "box")
    authority.issue_kit(request, now=NOW)
    authority.revoke(ks.box_id, now=NOW)
    meta_path = authority.folder / "authority.json"
    meta = json.loads(meta_path.read_text())
    meta["revoked"] = []  # someone with access to the folder, but not the passphrase, un-revokes the box
    meta_path.write_text(json.dumps(meta))
    crl_before = (authority.folder / "crl.pem").read_bytes()
    with pytest.raises(ProvisioningError, match="changed outside mammo"):
        Authority.open(authority.folder, "federation-pw")
    with pytest.raises(ProvisioningError, match="changed outside mammo"):
        authority.refresh_crl(now=NOW)
    assert (authority.folder / "crl.pem").read_bytes() == crl_before
