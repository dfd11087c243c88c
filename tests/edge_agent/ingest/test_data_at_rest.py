"""A stolen disk of a clinic box is unreadable, and a factory reset makes the box's own copies unreadable for good.

Real `mammo` processes, a real ingest of a study, real keystore files; the
master key is read out only by the test, to prove it is nowhere on the disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.errors import IntegrityError, KeystoreError
from edge_agent.ingest import mg
from edge_agent.ingest.image_store import ImageStore
from provisioning.envelope import open_sealed
from provisioning.keystore import FileKeystore

REPO = Path(__file__).resolve().parents[3]
PASSPHRASE = "clinic operator passphrase 7"


def mammo(home: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_")}
    e.update({"MAMMO_HOME": str(home), "MAMMO_INGEST_WORKERS": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True, env=e, cwd=REPO,
                          timeout=120, input=stdin if stdin is not None else "", check=False)


def ingest(home: Path, tmp_path: Path, study, env: dict[str, str]) -> None:
    usb = tmp_path / "usb"
    for i, ds in enumerate(study):
        mg.write(ds, usb / f"IMG{i}.dcm")
    r = mammo(home, "ingest", str(usb), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["counts"]["accepted"] == 4


def every_file(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def images(home: Path) -> list[Path]:
    return every_file(home / "images")


def test_stolen_disk_of_a_clinic_box_decrypts_nothing_without_the_passphrase(tmp_path: Path, study):
    home = tmp_path / "clinic"
    (tmp_path / "clinic").mkdir()
    (home / "mammo.toml").write_text("[keystore]\ndemo_mode = false\ntpm = \"off\"\n")
    ingest(home, tmp_path, study, {"MAMMO_KEYSTORE_PASSPHRASE": PASSPHRASE})
    master = FileKeystore.open(home / "keystore.json", PASSPHRASE).master_key()
    assert images(home) and not (home / "secrets" / "passphrase").exists()

    stolen = tmp_path / "stolen"
    shutil.copytree(home, stolen)
    r = mammo(stolen, "status", "--json")  # no passphrase in the environment, no terminal: the thief's view
    assert r.returncode == 1 and "No keystore passphrase" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        FileKeystore.open(stolen / "keystore.json", "clinic operator passphrase 8")
    for path in every_file(stolen):  # neither the key nor the woman's name lies in the clear anywhere on the disk
        raw = path.read_bytes()
        assert master not in raw and master.hex().encode() not in raw, path
        assert "ÇELİK".encode() not in raw and b"CELIK" not in raw.upper(), path
    blob = images(stolen)[0]
    with pytest.raises(IntegrityError):
        open_sealed(os.urandom(32), blob.read_bytes(), ImageStore.AAD + blob.name.encode())
    # The disk did hold the data: with the passphrase (and only then) the same copy opens.
    key = FileKeystore.open(stolen / "keystore.json", PASSPHRASE).master_key()
    assert open_sealed(key, blob.read_bytes(), ImageStore.AAD + blob.name.encode())


def test_a_clinic_box_refuses_a_passphrase_file_and_reprotect_takes_it_out_of_demo_mode(tmp_path: Path, study):
    home = tmp_path / "box"
    ingest(home, tmp_path, study, {"MAMMO_KEYSTORE_TPM": "off"})  # a demo box: generated passphrase file
    demo_file = home / "secrets" / "passphrase"
    demo_passphrase = demo_file.read_text().strip()
    box_id = FileKeystore.open(home / "keystore.json", demo_passphrase).box_id
    clinic = {"MAMMO_KEYSTORE_DEMO_MODE": "false", "MAMMO_KEYSTORE_TPM": "off"}

    r = mammo(home, "status", "--json", env=clinic)
    assert r.returncode == 1 and "keystore_demo_mode is false: refused" in r.stderr and "mammo keys reprotect" in r.stderr
    r = mammo(home, "keys", "reprotect", "--stdin", "--json", env=clinic, stdin=PASSPHRASE + "\n")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"box_id": box_id, "protectors": ["passphrase"], "passphrase_file_destroyed": True}
    assert not demo_file.exists()
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        FileKeystore.open(home / "keystore.json", demo_passphrase)
    r = mammo(home, "status", "--json", env={**clinic, "MAMMO_KEYSTORE_PASSPHRASE": PASSPHRASE})
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["box_id"] == box_id  # same box, same data
    st = mammo(home, "keys", "status", "--json", env=clinic)
    assert json.loads(st.stdout.strip().splitlines()[-1])["passphrase_file"] is False

    fresh = tmp_path / "fresh"  # and a new clinic box never writes one
    r = mammo(fresh, "up", "--check", "--json", env=clinic)
    assert r.returncode == 1 and "No keystore passphrase" in r.stderr
    assert not (fresh / "keystore.json").exists() and not (fresh / "secrets" / "passphrase").exists()


def test_factory_reset_is_a_crypto_erase(tmp_path: Path, study):
    home = tmp_path / "box"
    home.mkdir()
    (home / "mammo.toml").write_text('box_name = "Talas ASM"\n')
    ingest(home, tmp_path, study, {"MAMMO_KEYSTORE_TPM": "off"})  # demo mode: the passphrase sits on the disk
    passphrase = (home / "secrets" / "passphrase").read_text().strip()
    master = FileKeystore.open(home / "keystore.json", passphrase).master_key()
    aside = tmp_path / "aside"  # what a thief (or a forgotten backup) kept of the images
    shutil.copytree(home / "images", aside)
    blobs = every_file(aside)
    assert open_sealed(master, blobs[0].read_bytes(), ImageStore.AAD + blobs[0].name.encode())  # real ciphertext of real images

    r = mammo(home, "factory-reset")
    assert r.returncode == 2 and "--yes" in r.stderr and (home / "keystore.json").exists()
    r = mammo(home, "factory-reset", "--yes", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["keystore_erased"] is True and report["kept"] == ["mammo.toml"] and "images" in report["removed"]
    assert [p.name for p in home.iterdir()] == ["mammo.toml"]

    # Nothing left on the disk opens the copies: no keystore, no passphrase file, the key in no file.
    left = [p for p in every_file(tmp_path) if aside not in p.parents]
    for path in left:
        raw = path.read_bytes()
        assert master not in raw and master.hex().encode() not in raw and passphrase.encode() not in raw, path
        with pytest.raises(KeystoreError):
            FileKeystore.open(path, passphrase)
    for blob in blobs:
        with pytest.raises(IntegrityError):
            open_sealed(os.urandom(32), blob.read_bytes(), ImageStore.AAD + blob.name.encode())

    r = mammo(home, "up", "--check", "--json", env={"MAMMO_KEYSTORE_TPM": "off"})  # the box starts again as a new one
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["box_name"] == "Talas ASM"
    assert FileKeystore.open(home / "keystore.json", (home / "secrets" / "passphrase").read_text().strip()).master_key() != master
