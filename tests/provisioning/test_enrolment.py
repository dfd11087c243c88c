"""Enrolment by startup kit, with real keys, certificates, CKKS contexts and files.

The authority and the box are real folders; the clock is passed in, so expired
and not-yet-valid kits are made by issuing at another time, not by patching.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from pathlib import Path

import pytest
import tenseal as ts
from cryptography import x509

from edge_agent.errors import KitRefused, ProvisioningError
from edge_agent.settings import Settings
from provisioning import enrolment
from provisioning.authority import Authority
from provisioning.keystore import FileKeystore, KdfParams
from provisioning.kit import parse_kit

FAST = KdfParams(time_cost=1, memory_kib=8 * 1024)
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)


class Box:
    """A box's keystore and provisioning folder, as `mammo provision request/install` use them."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.keystore = FileKeystore.create(home / "keystore.json", "box-pw", FAST)
        self.folder = home / "provisioning"

    def request(self) -> bytes:
        return enrolment.make_request(self.keystore, self.folder)

    def install(self, kit: bytes, now: dt.datetime = NOW, pin: str | None = None) -> object:
        return enrolment.install(kit, keystore=self.keystore, folder=self.folder, pinned_authority=pin, now=now)

    def snapshot(self) -> dict[str, tuple[bytes, int]]:
        return {str(p.relative_to(self.home)): (p.read_bytes(), p.stat().st_mode) for p in sorted(self.home.rglob("*")) if p.is_file()}


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", "federation-pw", kdf=FAST, now=NOW)


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path / "box")


def test_authority_folder_is_private_and_its_keys_are_sealed(authority: Authority):
    folder = authority.folder
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {p.name for p in folder.iterdir()} == {"authority.json", "ca.pem", "ca.key.sealed", "crl.pem", "signing-v1.pub.pem",
                                                   "signing-v1.key.sealed", "he-v1.public.tenseal", "he-v1.secret.sealed"}
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in folder.iterdir())
    assert b"PRIVATE KEY" not in b"".join(p.read_bytes() for p in folder.iterdir())
    public = ts.context_from((folder / "he-v1.public.tenseal").read_bytes())
    assert not public.is_private()  # the coordinator's context cannot decrypt
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]


def test_wrong_authority_passphrase_is_refused_and_changes_nothing(authority: Authority):
    before = {p.name: p.read_bytes() for p in authority.folder.iterdir()}
    with pytest.raises(ProvisioningError, match="wrong passphrase"):
        Authority.open(authority.folder, "not-the-passphrase")
    assert {p.name: p.read_bytes() for p in authority.folder.iterdir()} == before
    with pytest.raises(ProvisioningError, match="already holds an authority"):
        Authority.init(authority.folder, "federation-pw", kdf=FAST)
    (authority.folder / "authority.json").unlink()  # as if init had been interrupted
    with pytest.raises(ProvisioningError, match="not empty"):
        Authority.init(authority.folder, "federation-pw", kdf=FAST)


def test_installed_kit_enrols_the_box_and_its_he_context_decrypts_what_the_coordinator_summed(authority: Authority, box: Box):
    kit = authority.issue_kit(box.request(), coordinator="coord.example.org:9092", settings={"box_name": "Talas ASM"}, now=NOW)
    box.install(kit)
    st = enrolment.status(box.folder, box.keystore.box_id, now=NOW)
    assert st["enrolled"] is True and st["state"] == "enrolled"
    assert st["box_id"] == box.keystore.box_id
    assert st["days_left"] == 30 and st["certificate_expires"].startswith((NOW + 30 * DAY).date().isoformat())
    assert st["authority_fingerprint"] == authority.meta["ca_fingerprint"]
    assert st["coordinator"] == "coord.example.org:9092"
    assert st["he_context_sha256"] == authority.meta["he"][0]["secret_sha256"]
    assert st["model_signing_key_fingerprint"] == authority.meta["signing"][0]["fingerprint"]
    # The kit's settings are a layer under mammo.toml.
    assert Settings.load(env={"MAMMO_HOME": str(box.home)}).box_name == "Talas ASM"
    (box.home / "mammo.toml").write_text('box_name = "Local name"\n', encoding="utf-8")
    assert Settings.load(env={"MAMMO_HOME": str(box.home)}).box_name == "Local name"
    # Real CKKS: two clinics encrypt, the coordinator adds with the public context only, a clinic decrypts.
    clinic = ts.context_from(enrolment.he_secret_context(box.keystore, box.folder))
    coordinator = ts.context_from(authority.he_public_context())
    a = ts.ckks_vector(clinic, [0.5, -1.25, 3.0]).serialize()
    b = ts.ckks_vector(clinic, [1.5, 0.25, -1.0]).serialize()
    total = (ts.ckks_vector_from(coordinator, a) + ts.ckks_vector_from(coordinator, b)).serialize()
    with pytest.raises(ValueError):
        ts.ckks_vector_from(coordinator, total).decrypt()
    assert ts.ckks_vector_from(clinic, total).decrypt() == pytest.approx([2.0, -1.0, 2.0], abs=1e-4)


def test_the_kit_carries_the_he_secret_only_encrypted_to_its_box(authority: Authority, box: Box, tmp_path: Path):
    kit = authority.issue_kit(box.request(), now=NOW)
    secret = authority._unseal_file("he-v1.secret.sealed")
    payload = base64.b64decode(json.loads(kit)["payload"])
    assert secret[1000:1064] not in payload and base64.b64encode(secret)[1000:1064] not in payload
    thief = Box(tmp_path / "thief")
    thief.request()
    stolen = enrolment.load_box_key(thief.keystore, thief.folder)
    from provisioning.kit import he_aad, open_for

    with pytest.raises(KitRefused, match="not encrypted to this box's key"):
        open_for(stolen, parse_kit(kit).he_sealed, he_aad(box.keystore.box_id, 1))


def _tampered(kit: bytes) -> bytes:
    outer = json.loads(kit)
    payload = json.loads(base64.b64decode(outer["payload"]))
    payload["coordinator"] = "evil.example.org:9092"
    outer["payload"] = base64.b64encode(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).decode()
    return json.dumps(outer).encode()


def _flipped(kit: bytes) -> bytes:
    raw = bytearray(kit)
    raw[len(raw) // 2] ^= 0x01
    return bytes(raw)


REFUSALS = {
    "tampered": ("signature does not verify", lambda a, other_a, req, other_req: _tampered(a.issue_kit(req, now=NOW))),
    "damaged": ("not a readable startup kit|signature does not verify", lambda a, other_a, req, other_req: _flipped(a.issue_kit(req, now=NOW))),
    "another box": ("is for box", lambda a, other_a, req, other_req: a.issue_kit(other_req, now=NOW)),
    "expired": ("expired on", lambda a, other_a, req, other_req: a.issue_kit(req, days=30, now=NOW - 40 * DAY)),
    "clock far behind": ("not valid yet.*set the box's date", lambda a, other_a, req, other_req: a.issue_kit(req, now=NOW + 2 * DAY)),
    "another authority": ("another authority", lambda a, other_a, req, other_req: other_a.issue_kit(req, now=NOW)),
    "older than installed": ("roll the box back", lambda a, other_a, req, other_req: a.issue_kit(req, now=NOW - 2 * DAY)),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_kits_give_the_reason_and_change_nothing_on_the_box(case: str, authority: Authority, box: Box, tmp_path: Path):
    other_box = Box(tmp_path / "other-box")
    other_authority = Authority.init(tmp_path / "other-authority", "other-federation", kdf=FAST, now=NOW)
    request = box.request()
    box.install(authority.issue_kit(request, now=NOW - DAY))  # enrolled already: the authority is pinned
    pattern, make = REFUSALS[case]
    bad = make(authority, other_authority, request, other_box.request())
    before = box.snapshot()
    with pytest.raises(KitRefused, match=pattern) as err:
        box.install(bad)
    assert "Fix:" in str(err.value) and "Nothing on the box was changed" in str(err.value)
    assert box.snapshot() == before


def test_a_pinned_fingerprint_refuses_another_authority_on_the_first_install(authority: Authority, box: Box, tmp_path: Path):
    other = Authority.init(tmp_path / "other", "other-federation", kdf=FAST, now=NOW)
    request = box.request()
    before = box.snapshot()
    with pytest.raises(KitRefused, match="another authority"):
        box.install(other.issue_kit(request, now=NOW), pin=authority.meta["ca_fingerprint"])
    assert box.snapshot() == before
    box.install(authority.issue_kit(request, now=NOW), pin=authority.meta["ca_fingerprint"])
    assert enrolment.status(box.folder, None)["enrolled"]


def test_install_without_a_request_says_to_make_one(authority: Authority, box: Box, tmp_path: Path):
    other = Box(tmp_path / "other")
    with pytest.raises(ProvisioningError, match="provision request"):
        box.install(authority.issue_kit(other.request(), now=NOW))
    assert not box.folder.exists()


def test_certificates_live_at_most_30_days(authority: Authority, box: Box):
    with pytest.raises(ProvisioningError, match="1 to 30 days"):
        authority.issue_kit(box.request(), days=31, now=NOW)
    cert = parse_kit(authority.issue_kit(box.request(), days=30, now=NOW)).certificate
    assert cert.not_valid_after_utc - NOW == 30 * DAY


def test_renewal_is_a_new_kit_for_the_same_key_and_replaces_the_old(authority: Authority, box: Box):
    box.install(authority.issue_kit(box.request(), now=NOW))
    key_before = (box.folder / "box-key.sealed").read_bytes()
    first = enrolment.status(box.folder, None, now=NOW)
    later = NOW + 25 * DAY
    assert enrolment.status(box.folder, None, now=later)["days_left"] == 5
    box.install(authority.issue_kit(box.request(), now=later), now=later)
    renewed = enrolment.status(box.folder, None, now=later)
    assert renewed["certificate_serial"] != first["certificate_serial"]
    assert renewed["days_left"] == 30 and renewed["state"] == "enrolled"
    assert (box.folder / "box-key.sealed").read_bytes() == key_before
    assert enrolment.status(box.folder, None, now=NOW + 60 * DAY)["state"] == "expired"


def test_the_provisioning_folder_is_private(authority: Authority, box: Box):
    box.install(authority.issue_kit(box.request(), now=NOW))
    assert box.folder.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in box.folder.iterdir())
    assert not [p for p in box.folder.iterdir() if p.name.endswith(".tmp")]
    assert os.path.getsize(box.folder / "kit.json") > 100_000  # the CKKS context travels inside


@pytest.mark.parametrize(("setting", "value"), [("keystore_passphrase", "leaked"), ("provision_authority_fingerprint", "0" * 64), ("home", "/tmp/x"), ("queue_lease_s", "soon")])
def test_a_kit_cannot_carry_secrets_the_trust_anchor_or_invalid_settings(authority: Authority, box: Box, setting: str, value: str):
    with pytest.raises(ProvisioningError, match=f"Initial setting refused.*{setting}"):
        authority.issue_kit(box.request(), settings={setting: value}, now=NOW)
    assert json.loads((authority.folder / "authority.json").read_text())["issued"] == []


def test_issue_refuses_requests_that_are_junk_altered_or_not_p256(authority: Authority, box: Box):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    with pytest.raises(ProvisioningError, match="not a certificate request"):
        authority.issue_kit(b"hello", now=NOW)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, box.keystore.box_id)])
    p384 = x509.CertificateSigningRequestBuilder().subject_name(name).sign(ec.generate_private_key(ec.SECP384R1()), hashes.SHA256())
    with pytest.raises(ProvisioningError, match="not ECDSA P-256"):
        authority.issue_kit(p384.public_bytes(serialization.Encoding.PEM), now=NOW)
    bad_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "../../etc")])
    odd = x509.CertificateSigningRequestBuilder().subject_name(bad_name).sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    with pytest.raises(ProvisioningError, match="not a box id"):
        authority.issue_kit(odd.public_bytes(serialization.Encoding.PEM), now=NOW)
    assert json.loads((authority.folder / "authority.json").read_text())["issued"] == []


def test_the_installed_kit_gives_the_box_its_model_signing_keys(authority: Authority, box: Box):
    from provisioning.kit import verify_release

    assert enrolment.model_signing_keys(box.folder) == ()
    box.install(authority.issue_kit(box.request(), now=NOW))
    version, signature = authority.sign(b"manifest")
    assert verify_release(enrolment.model_signing_keys(box.folder), signature, b"manifest", NOW) == version == 1
