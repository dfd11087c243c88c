import json
import os
from pathlib import Path

import pytest

from edge_agent.box import open_box, resolve_passphrase
from edge_agent.errors import IntegrityError, KeystoreError
from edge_agent.settings import Settings
from provisioning.envelope import open_sealed, seal
from provisioning.keystore import FileKeystore, KdfParams, verify

FAST = KdfParams(time_cost=1, memory_kib=8 * 1024)


def test_first_start_creates_identity_and_reopening_gives_the_same_keys(tmp_path: Path):
    ks = FileKeystore.open_or_create(tmp_path / "k.json", "pw", FAST)
    again = FileKeystore.open_or_create(tmp_path / "k.json", "pw", FAST)
    assert again.box_id == ks.box_id
    assert again.master_key() == ks.master_key() and len(ks.master_key()) == 32
    assert verify(ks.public_key_pem(), again.sign(b"model-release"), b"model-release")
    assert not verify(ks.public_key_pem(), again.sign(b"model-release"), b"model-releasE")
    assert os.stat(tmp_path / "k.json").st_mode & 0o777 == 0o600


def test_keystore_file_holds_no_plain_secret(tmp_path: Path):
    ks = FileKeystore.create(tmp_path / "k.json", "pw", FAST)
    raw = (tmp_path / "k.json").read_bytes()
    import base64

    assert base64.b64encode(ks.master_key()) not in raw
    assert ks.master_key() not in raw


def test_wrong_passphrase_and_tampering_are_refused_without_changing_the_file(tmp_path: Path):
    p = tmp_path / "k.json"
    FileKeystore.create(p, "right", FAST)
    before = p.read_bytes()
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        FileKeystore.open(p, "wrong")
    doc = json.loads(before)
    doc["box_id"] = "someone-else"  # the header is authenticated too
    p.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match="tampered"):
        FileKeystore.open(p, "right")
    p.write_bytes(before)
    FileKeystore.open(p, "right")
    with pytest.raises(KeystoreError, match="refusing to overwrite"):
        FileKeystore.create(p, "other", FAST)
    assert p.read_bytes() == before


def test_purpose_secrets_are_distinct_and_stable(tmp_path: Path):
    ks = FileKeystore.create(tmp_path / "k.json", "pw", FAST)
    assert ks.secret("uid-remap") != ks.secret("date-shift")
    assert ks.secret("uid-remap") == FileKeystore.open(tmp_path / "k.json", "pw").secret("uid-remap")


def test_envelope_roundtrip_and_tamper_detection():
    key = os.urandom(32)
    blob = seal(key, b"pixel data", aad=b"sha256:abc")
    assert open_sealed(key, blob, aad=b"sha256:abc") == b"pixel data"
    assert b"pixel data" not in blob
    assert seal(key, b"pixel data") != seal(key, b"pixel data")  # fresh data key and nonce each time
    flipped = bytearray(blob)
    flipped[-5] ^= 1
    with pytest.raises(IntegrityError):
        open_sealed(key, bytes(flipped), aad=b"sha256:abc")
    with pytest.raises(IntegrityError):
        open_sealed(key, blob, aad=b"sha256:other")
    with pytest.raises(IntegrityError):
        open_sealed(os.urandom(32), blob, aad=b"sha256:abc")
    with pytest.raises(IntegrityError, match="truncated"):
        open_sealed(key, blob[:20])


def test_unattended_first_start_generates_a_private_passphrase_once(tmp_path: Path):
    s = Settings.load(env={"MAMMO_HOME": str(tmp_path)})
    box = open_box(s, interactive=False)
    box.close()
    secret_file = tmp_path / "secrets" / "passphrase"
    assert os.stat(secret_file).st_mode & 0o777 == 0o600
    assert open_box(s, interactive=False).keystore.box_id == box.keystore.box_id


def test_no_passphrase_and_generation_disabled_is_a_clear_error(tmp_path: Path):
    s = Settings.load(env={"MAMMO_HOME": str(tmp_path), "MAMMO_KEYSTORE_DEMO_MODE": "false"})
    with pytest.raises(KeystoreError, match="MAMMO_KEYSTORE_PASSPHRASE"):
        resolve_passphrase(s, interactive=False)
