"""Signed releases, enforced: an unenrolled box runs only releases signed by the project key pinned in the software, an
enrolled box only releases signed by its federation; the self-test runs on the box's active hardware profile.

Real Ed25519 keys, a real authority and startup kit, real copies of the shipped release, real TFLite and ONNX runtimes.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent import audit
from edge_agent.errors import ModelError
from edge_agent.inference.activation import (
    PINNED_KEYS_FILE,
    SHIPPED_DIR,
    ModelRegistry,
    ReleaseTrust,
    check_signature,
    load_pinned_keys,
    sign_release,
)
from edge_agent.settings import Settings
from models.release_files import verify_manifest, write_manifest
from provisioning import enrolment
from provisioning.authority import Authority
from provisioning.keystore import KdfParams

REPO = Path(__file__).resolve().parents[3]
FAST = KdfParams(time_cost=1, memory_kib=8 * 1024)
DAY = dt.timedelta(days=1)


def shipped_releases() -> list[Path]:
    return sorted(p for p in SHIPPED_DIR.iterdir() if p.is_dir() and (p / "manifest.json").exists())


def test_every_release_under_models_release_is_signed_with_the_pinned_project_key():
    """The guard that a release was signed before it ships: a new folder under models/release fails here until signed."""
    assert shipped_releases(), "no release under models/release"
    pinned = ReleaseTrust((), load_pinned_keys())
    now = dt.datetime.now(dt.UTC)
    for folder in shipped_releases():
        verify_manifest(folder)
        fix = f"sign it: python scripts/sign_release.py models/release/{folder.name}"
        assert (folder / "manifest.sig").exists(), f"release {folder.name} is not signed; {fix}"
        assert check_signature(pinned, (folder / "manifest.json").read_bytes(), (folder / "manifest.sig").read_bytes(), folder.name, now)


def test_a_shipped_release_activates_on_an_unenrolled_box_and_the_trust_is_recorded(box, shipped_dir, release_dir):
    reg = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir)
    assert reg.trust().mode == "demo"
    act = reg.activate(str(release_dir), by="tech", reason="copy of the shipped release")
    assert act.selftest["signed_by"] == "project release key 1"
    details = json.loads([e for e in audit.entries(box.db) if e.action == "model_activate"][-1].details)
    assert details["trust"] == "demo" and details["signed_by"] == "project release key 1"


def test_a_tampered_manifest_is_refused_even_when_every_file_still_matches_it(box, shipped_dir, release_dir):
    reg = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir)
    before = reg.ensure_active()
    manifest = json.loads((release_dir / "manifest.json").read_text())
    manifest["version"] = "9.9.9"  # the files still match their hashes; only the signature can tell
    (release_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    verify_manifest(release_dir)
    with pytest.raises(ModelError, match="does not verify with the project release key"):
        reg.activate(str(release_dir), by="tech", reason="tampered")
    assert reg.active().id == before.id


def test_an_unsigned_release_is_refused_on_an_unenrolled_box_with_a_clear_message(box, shipped_dir, release_dir):
    (release_dir / "manifest.sig").unlink()
    reg = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir)
    with pytest.raises(ModelError, match=r"not signed \(no manifest.sig\)\. This box is not enrolled \(demo mode\)"):
        reg.activate(str(release_dir), by="tech", reason="unsigned")
    assert reg.active() is None


def test_a_release_signed_by_another_key_is_refused(box, shipped_dir, release_dir):
    sign_release(release_dir, Ed25519PrivateKey.generate())
    reg = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir)
    with pytest.raises(ModelError, match="does not verify with the project release key pinned"):
        reg.activate(str(release_dir), by="tech", reason="forged")


def test_first_start_skips_a_newer_unsigned_release_and_runs_the_newest_signed_one(box, shipped_dir, tmp_path):
    root = tmp_path / "shipped"
    src = next(shipped_dir.iterdir())
    shutil.copytree(src, root / src.name)
    shutil.copytree(src, root / "99.0.0")  # a release under development: built, not signed yet
    (root / "99.0.0" / "manifest.sig").unlink()
    act = ModelRegistry(box.db, box.settings, shipped_dir=root).ensure_active()
    assert act.path == root / src.name


def test_signing_refuses_a_release_whose_files_do_not_match_its_manifest(release_dir):
    (release_dir / "model.json").write_text("{}")
    with pytest.raises(ModelError, match="Not signing"):
        sign_release(release_dir, Ed25519PrivateKey.generate())


def test_sign_release_script_signs_and_says_whether_boxes_will_accept_the_key(release_dir, tmp_path):
    key = tmp_path / "keys" / "key.pem"
    made = subprocess.run([sys.executable, "scripts/sign_release.py", "--new-key", str(key)], cwd=REPO, capture_output=True, text=True, check=True)
    assert "BEGIN PUBLIC KEY" in made.stdout and key.stat().st_mode & 0o777 == 0o600
    (release_dir / "manifest.sig").unlink()
    run = subprocess.run([sys.executable, "scripts/sign_release.py", str(release_dir), "--key", str(key)], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1 and "NOT with a key pinned" in run.stderr  # a new key signs, but boxes refuse it until pinned
    pinned = tmp_path / "pinned.pem"
    pinned.write_text(made.stdout)
    trust = ReleaseTrust((), load_pinned_keys(pinned))
    assert check_signature(trust, (release_dir / "manifest.json").read_bytes(), (release_dir / "manifest.sig").read_bytes(), "x",
                           dt.datetime.now(dt.UTC)) == "project release key 1"


# --- an enrolled box: its federation's key only ---------------------------------------------------


@pytest.fixture
def federation(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", "federation-pw", kdf=FAST)


def enrol(box, authority: Authority) -> None:
    folder = enrolment.folder_of(box.settings)
    kit = authority.issue_kit(enrolment.make_request(box.keystore, folder))
    enrolment.install(kit, keystore=box.keystore, folder=folder)


def sign_by_federation(authority: Authority, release: Path) -> None:
    _, signature = authority.sign((release / "manifest.json").read_bytes())
    (release / "manifest.sig").write_text(base64.b64encode(signature).decode() + "\n")


def test_an_enrolled_box_runs_only_releases_signed_by_its_federation(box, shipped_dir, release_dir, federation, tmp_path):
    enrol(box, federation)
    reg = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir)
    assert reg.trust().mode == "federation"
    with pytest.raises(ModelError, match="does not verify with this federation's model-signing keys"):
        reg.activate(str(release_dir), by="tech", reason="signed by the project only")
    with pytest.raises(ModelError, match="No model release this box trusts"):
        reg.ensure_active()  # the shipped releases are not the federation's
    other = Authority.init(tmp_path / "other", "other-federation", kdf=FAST)
    sign_by_federation(other, release_dir)
    with pytest.raises(ModelError, match="does not verify"):
        reg.activate(str(release_dir), by="tech", reason="another federation's release")
    sign_by_federation(federation, release_dir)
    act = reg.activate(str(release_dir), by="tech", reason="federation release")
    assert act.selftest["signed_by"] == "federation key v1"
    (release_dir / "manifest.sig").unlink()
    with pytest.raises(ModelError, match="not signed .* federation's model-signing key"):
        reg.activate(str(release_dir), by="tech", reason="unsigned")


def test_a_retired_federation_key_verifies_until_its_date_and_not_after(box, shipped_dir, release_dir, federation):
    sign_by_federation(federation, release_dir)  # signed with key v1
    federation.rotate("signing", verify_days=10)
    enrol(box, federation)  # the kit carries v2 (active) and v1 (retired, verifies for 10 days)
    now = dt.datetime.now(dt.UTC).timestamp()
    within = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir, clock=lambda: now + 9 * 86400)
    assert within.activate(str(release_dir), by="tech", reason="old release").selftest["signed_by"] == "federation key v1"
    after = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir, clock=lambda: now + 11 * 86400)
    with pytest.raises(ModelError, match="retired past their verify-until date"):
        after.activate(str(release_dir), by="tech", reason="too late")
    with pytest.raises(ModelError, match="retired past their verify-until date"):
        after.verify(release_dir)  # what the worker checks when it loads the active model


# --- the self-test runs on the active hardware profile ---------------------------------------------


TFLITE_CPU = """name = "tflite-cpu"
description = "Test profile: INT8 TFLite on the CPU, no delegate."
priority = 5
runtime = "litert"
backend = "tflite-int8"
threads = 1
batch_size = 1
precision = "INT8"
workers = 1
latency_budget_ms_per_study = 5000
memory_cap_mb = 1024
"""


@pytest.fixture
def profiles_dir(tmp_path: Path) -> Path:
    d = tmp_path / "profiles"
    d.mkdir()
    shutil.copy(REPO / "hardware_profiles" / "profiles" / "cpu-small.toml", d)
    (d / "tflite-cpu.toml").write_text(TFLITE_CPU)
    return d


def registry_on(box, profile: str, shipped_dir: Path, profiles_dir: Path, pinned: Path = PINNED_KEYS_FILE) -> ModelRegistry:
    settings = Settings.load(env={"MAMMO_HOME": str(box.settings.home), "MAMMO_INFER_PROFILE": profile})
    return ModelRegistry(box.db, settings, shipped_dir=shipped_dir, pinned_keys=pinned, profiles_dir=profiles_dir)


def test_the_self_test_runs_on_the_tflite_runtime_of_a_tflite_profile(box, shipped_dir, release_dir, profiles_dir):
    act = registry_on(box, "tflite-cpu", shipped_dir, profiles_dir).activate(str(release_dir), by="tech", reason="tflite box")
    assert (act.selftest["backend"], act.selftest["profile"], act.selftest["passed"]) == ("tflite-int8", "tflite-cpu", True)
    details = json.loads([e for e in audit.entries(box.db) if e.action == "model_activate"][-1].details)
    assert (details["backend"], details["profile"]) == ("tflite-int8", "tflite-cpu")


def test_a_broken_tflite_model_fails_activation_on_a_tflite_profile_while_onnx_boxes_accept_it(box, shipped_dir, release_dir, profiles_dir,
                                                                                                release_signer):
    (release_dir / "model_int8.tflite").write_bytes(b"TFL3 this is not a flatbuffer")
    write_manifest(release_dir, json.loads((release_dir / "model.json").read_text())["version"])
    release_signer.sign(release_dir)  # a signed but badly built release: only running it can tell
    tflite = registry_on(box, "tflite-cpu", shipped_dir, profiles_dir, release_signer.pinned)
    with pytest.raises(ModelError, match="its tflite-int8 model does not load for hardware profile tflite-cpu"):
        tflite.activate(str(release_dir), by="tech", reason="broken tflite")
    assert tflite.active() is None
    onnx = registry_on(box, "cpu-small", shipped_dir, profiles_dir, release_signer.pinned)
    act = onnx.activate(str(release_dir), by="tech", reason="onnx box")
    assert (act.selftest["backend"], act.selftest["profile"]) == ("onnx-int8", "cpu-small")


def test_sign_release_script_signs_with_the_federation_authority_for_enrolled_boxes(box, shipped_dir, release_dir, federation):
    enrol(box, federation)
    env = {"PATH": "/usr/bin:/bin", "MAMMO_AUTHORITY_PASSPHRASE": "federation-pw"}
    run = subprocess.run([sys.executable, "scripts/sign_release.py", str(release_dir), "--authority", str(federation.folder)],
                         cwd=REPO, capture_output=True, text=True, env=env)
    assert run.returncode == 0 and "federation model-signing key v1" in run.stdout, run.stderr
    act = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir).activate(str(release_dir), by="tech", reason="federation release")
    assert act.selftest["signed_by"] == "federation key v1"
