"""The signed round manifest: a box verifies it with its kit's model-signing keys and finds (or not) its update."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.errors import IntegrityError
from provisioning import enrolment
from sync.coordinator.manifest import DOMAIN, build, canonical, sign_manifest, update_included, verify_manifest
from tests.sync.federation import SPEC, TestBox, new_authority

CONTRIBUTIONS = [
    {"sha256": "a" * 64, "weight": 40.0, "share": 0.8, "staleness": 0, "example_count": 40, "epsilon": 0.4, "delta_dp": 1e-5},
    {"sha256": "b" * 64, "weight": 10.0, "share": 0.2, "staleness": 1, "example_count": 14, "epsilon": 0.9, "delta_dp": 1e-5},
]


def manifest():
    return build(3, base_model_version="0.1.0+fl2", new_model_version="0.1.0+fl3", spec_digest=SPEC.digest, aggregate_sha256="c" * 64,
                 total_weight=50.0, contributions=CONTRIBUTIONS, now=dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC))


@pytest.fixture(scope="module")
def signed_and_keys(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("manifest")
    authority = new_authority(tmp / "authority")
    box = TestBox.create(tmp / "box")
    box.enrol(authority)
    body, signature = sign_manifest(manifest(), authority.signing_key(1))
    yield body, signature, enrolment.model_signing_keys(box.folder)
    box.db.conn.close()


def test_a_box_verifies_the_manifest_and_finds_its_update(signed_and_keys):
    body, signature, keys = signed_and_keys
    m = verify_manifest(body, signature, keys)
    assert (m.round, m.base_model_version, m.new_model_version, m.total_weight) == (3, "0.1.0+fl2", "0.1.0+fl3", 50.0)
    mine = update_included(m, "a" * 64)
    assert mine is not None and (mine.share, mine.epsilon, mine.staleness) == (0.8, 0.4, 0)
    assert update_included(m, "d" * 64) is None
    assert m.as_dict()["max_epsilon"] == 0.9 and canonical(m) == body
    assert b"box_id" not in body  # which clinics took part is not told to every clinic


@pytest.mark.parametrize("tamper", ["drop_update", "weight", "version"])
def test_an_altered_manifest_is_refused(signed_and_keys, tamper):
    body, signature, keys = signed_and_keys
    if tamper == "drop_update":
        forged = body.replace(b'"' + b"b" * 64 + b'"', b'"' + b"e" * 64 + b'"')
    elif tamper == "weight":
        forged = body.replace(b'"share":0.8', b'"share":0.9')
    else:
        forged = body.replace(b"0.1.0+fl3", b"0.1.0+fl9")
    assert forged != body
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_manifest(forged, signature, keys)


def test_another_key_or_a_release_style_signature_is_refused(signed_and_keys):
    body, _, keys = signed_and_keys
    _, foreign = sign_manifest(manifest(), Ed25519PrivateKey.generate())
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_manifest(body, foreign, keys)
    key = Ed25519PrivateKey.generate()
    without_domain = base64.b64encode(key.sign(body))  # how a release manifest is signed: must not pass as a round manifest
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_manifest(body, without_domain, key.public_key())
    assert verify_manifest(body, base64.b64encode(key.sign(DOMAIN + body)), key.public_key()).round == 3


def test_a_manifest_in_another_form_is_refused_even_if_signed(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    body = canonical(manifest()).replace(b'{"aggregate', b'{ "aggregate')
    with pytest.raises(IntegrityError, match="canonical"):
        verify_manifest(body, base64.b64encode(key.sign(DOMAIN + body)), key.public_key())
