"""Key protectors: the TPM opens the box unattended and only on its own machine; the passphrase is the way back.

The TPM is a real software TPM (``swtpm``, Debian's package) started per test
on a free loopback port with its own state folder; a second one with another
folder is "another machine" (or a replaced mainboard).  Skipped, with the
missing part named, where swtpm or tpm2-pytss is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge_agent.box import open_box
from edge_agent.console import data, views
from edge_agent.errors import KeystoreError
from edge_agent.keys_cli import status
from edge_agent.settings import Settings
from provisioning import tpm
from provisioning.keystore import FileKeystore, KdfParams, protector_records
from provisioning.protectors import PassphraseProtector, b64, derive
from provisioning.tpm import TpmProtector

FAST = KdfParams(time_cost=1, memory_kib=8 * 1024)


def _free_port_pair() -> int:
    """A port p with p+1 free too: the swtpm TCTI reaches the control channel at port + 1."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return int(port)
    raise RuntimeError("no free pair of loopback ports")


@pytest.fixture
def start_tpm(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Starts a fresh software TPM and returns its TCTI; each call is another TPM (another machine)."""
    missing = [] if shutil.which("swtpm") else ["swtpm (apt-get install swtpm swtpm-tools)"]
    reason = tpm.unavailable("swtpm:")
    if reason:
        missing.append(reason)
    if missing:
        pytest.skip("software TPM test needs " + " and ".join(missing))
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        state = tmp_path / f"tpm{len(procs)}"
        state.mkdir()
        port = _free_port_pair()
        proc = subprocess.Popen(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
                                 "--server", f"type=tcp,port={port},bindaddr=127.0.0.1", "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                                 "--flags", "not-need-init,startup-clear", "--log", f"file={state / 'swtpm.log'}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port + 1), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"swtpm did not start (see {state / 'swtpm.log'})") from None
                time.sleep(0.05)
        return f"swtpm:host=127.0.0.1,port={port}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def _extend_pcr16(tcti: str) -> None:
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
    from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA

    name, _, conf = tcti.partition(":")
    with ESAPI(TCTILdr(name, conf)) as ctx:
        ctx.pcr_extend(ESYS_TR.PCR16, TPML_DIGEST_VALUES([TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=b"\x01" * 32))]))


def test_the_tpm_opens_the_keystore_alone_and_only_its_own(tmp_path: Path, start_tpm):
    this_machine, other_machine = start_tpm(), start_tpm()
    path = tmp_path / "keystore.json"
    created = FileKeystore.create_protected(path, [TpmProtector(this_machine), PassphraseProtector("recovery words", FAST)])
    assert [r["kind"] for r in protector_records(path)] == ["tpm2", "passphrase"]

    opened = FileKeystore.unlock(path, [TpmProtector(this_machine)])  # no passphrase asked
    assert opened.master_key() == created.master_key() and opened.box_id == created.box_id

    with pytest.raises(KeystoreError, match="this TPM did not seal the key") as refused:
        FileKeystore.unlock(path, [TpmProtector(other_machine)])  # the disk moved to another machine, or the mainboard was replaced
    assert "passphrase still opens the box" in str(refused.value)
    recovered = FileKeystore.unlock(path, [TpmProtector(other_machine), PassphraseProtector("recovery words")])
    assert recovered.master_key() == created.master_key()

    recovered.reprotect(path, [TpmProtector(other_machine), PassphraseProtector("recovery words", FAST)])  # the new board takes over
    assert FileKeystore.unlock(path, [TpmProtector(other_machine)]).master_key() == created.master_key()
    with pytest.raises(KeystoreError, match="this TPM did not seal"):
        FileKeystore.unlock(path, [TpmProtector(this_machine)])


def test_a_pcr_bound_seal_refuses_after_the_boot_chain_changed(tmp_path: Path, start_tpm):
    tcti = start_tpm()
    path = tmp_path / "keystore.json"
    created = FileKeystore.create_protected(path, [TpmProtector(tcti, "sha256:16"), PassphraseProtector("recovery words", FAST)])
    assert FileKeystore.unlock(path, [TpmProtector(tcti)]).box_id == created.box_id
    _extend_pcr16(tcti)  # as a firmware or boot loader update would change PCRs 0-7
    with pytest.raises(KeystoreError, match="PCRs sha256:16 changed"):
        FileKeystore.unlock(path, [TpmProtector(tcti)])
    again = FileKeystore.unlock(path, [TpmProtector(tcti), PassphraseProtector("recovery words")])
    again.reprotect(path, [TpmProtector(tcti, "sha256:16"), PassphraseProtector("recovery words", FAST)])  # `mammo keys reprotect`
    assert FileKeystore.unlock(path, [TpmProtector(tcti)]).master_key() == created.master_key()


def test_a_clinic_box_with_a_tpm_starts_unattended_and_recovers_with_its_passphrase(tmp_path: Path, start_tpm):
    tcti = start_tpm()
    env = {"MAMMO_HOME": str(tmp_path / "box"), "MAMMO_KEYSTORE_DEMO_MODE": "false", "MAMMO_KEYSTORE_TPM": tcti}
    first = open_box(Settings.load(env={**env, "MAMMO_KEYSTORE_PASSPHRASE": "told once at the console"}), interactive=False)
    first.close()
    unattended = Settings.load(env=env)
    box = open_box(unattended, interactive=False)  # a restart: no passphrase anywhere, the TPM unseals
    assert box.keystore.box_id == first.keystore.box_id
    box.close()
    st = status(unattended)
    assert st["protectors"][0] == "TPM 2.0" and st["protectors"][1].startswith("passphrase") and st["passphrase_file"] is False
    view = data.keys(unattended)
    assert not view.demo and view.protectors[0] == "TPM 2.0"
    assert "Unlocked by" in views.keys("en", view, "Europe/Istanbul") and "TPM 2.0, passphrase" in views.keys("en", view, "Europe/Istanbul")
    assert not (tmp_path / "box" / "secrets").exists()

    replaced = Settings.load(env={**env, "MAMMO_KEYSTORE_TPM": start_tpm()})  # a new mainboard
    with pytest.raises(KeystoreError, match="this TPM did not seal the key.*No keystore passphrase"):
        open_box(replaced, interactive=False)
    back = open_box(Settings.load(env={**env, "MAMMO_KEYSTORE_TPM": replaced.keystore_tpm, "MAMMO_KEYSTORE_PASSPHRASE": "told once at the console"}),
                    interactive=False)
    assert back.keystore.box_id == first.keystore.box_id
    back.close()


def test_a_tpm_asked_for_by_name_but_unreachable_stops_creation_with_the_fix(tmp_path: Path):
    if tpm.unavailable("swtpm:"):
        pytest.skip(f"needs tpm2-pytss: {tpm.unavailable('swtpm:')}")
    port = _free_port_pair()  # nothing listens there
    s = Settings.load(env={"MAMMO_HOME": str(tmp_path), "MAMMO_KEYSTORE_PASSPHRASE": "pw", "MAMMO_KEYSTORE_TPM": f"swtpm:host=127.0.0.1,port={port}"})
    with pytest.raises(KeystoreError, match="cannot reach the TPM.*set keystore_tpm = off"):
        open_box(s, interactive=False)
    assert not s.keystore_path.exists()


def test_a_protector_record_from_another_keystore_opens_nothing(tmp_path: Path):
    mine, theirs = tmp_path / "mine.json", tmp_path / "theirs.json"
    FileKeystore.create(mine, "same words", FAST)
    FileKeystore.create(theirs, "same words", FAST)
    doc = json.loads(mine.read_text())
    doc["protectors"] = json.loads(theirs.read_text())["protectors"]  # a KEK wrapped for the other box's header
    mine.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match="wrong passphrase, or the file was tampered with"):
        FileKeystore.open(mine, "same words")


def test_a_version_1_keystore_still_opens_and_reprotect_upgrades_it(tmp_path: Path):
    """Boxes made before protectors: the secret part sealed directly under Argon2id(passphrase)."""
    path = tmp_path / "keystore.json"
    salt, nonce, master, identity = os.urandom(16), os.urandom(12), os.urandom(32), os.urandom(32)
    header = {"format": "mammo-keystore/1", "box_id": "b-1", "created_at": 1.0, "public_key": "-",
              "kdf": {"name": "argon2id", "salt": b64(salt), "time_cost": 1, "memory_kib": 8 * 1024, "parallelism": 1}}
    secret = json.dumps({"master_key": b64(master), "identity": b64(identity)}).encode()
    ct = AESGCM(derive("old words", salt, FAST)).encrypt(nonce, secret, json.dumps(header, sort_keys=True).encode())
    path.write_text(json.dumps({**header, "nonce": b64(nonce), "ciphertext": b64(ct)}))
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        FileKeystore.open(path, "other words")
    old = FileKeystore.open(path, "old words")
    assert old.master_key() == master and protector_records(path)[0]["kind"] == "passphrase"
    old.reprotect(path, [PassphraseProtector("new words", FAST)])
    assert json.loads(path.read_text())["format"] == "mammo-keystore/2"
    assert FileKeystore.open(path, "new words").master_key() == master
