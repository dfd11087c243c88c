"""The box's outbox with real keystores, kits, CKKS ciphertexts, SQLite files and SIGKILLed processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import IntegrityError, SyncError
from edge_agent.store import integrity_ok, open_database
from provisioning import he as he_material
from provisioning.authority import Authority
from sync import he, outbox
from tests.sync.federation import PASSPHRASE, SPEC, TestBox, make_update, new_authority

REPO = Path(__file__).resolve().parents[2]
DAY = 86_400.0


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return new_authority(tmp_path_factory.mktemp("federation") / "authority")


@pytest.fixture
def enrolled(tmp_path: Path, authority: Authority) -> Iterator[TestBox]:
    box = TestBox.create(tmp_path / "box")
    box.enrol(authority)
    yield box
    box.db.conn.close()


def decrypt_sent(box: TestBox, data: bytes) -> np.ndarray:
    return he.decrypt(he_material.load_context(box.he_secret(), need_secret=True), data, fresh=True)


def test_an_enrolled_box_keeps_only_ciphertext_that_decrypts_to_the_delta(enrolled: TestBox):
    update = make_update(1)
    assert outbox.place_update(enrolled.db, enrolled.home, update, keystore=enrolled.keystore) == update.update_id
    [entry] = outbox.pending(enrolled.db)
    assert (entry.state, entry.example_count, entry.base_model_version, entry.he_version, entry.spec_digest) == ("queued", 40, "0.1.0", 1, SPEC.digest)
    data = outbox.ciphertext(enrolled.db, entry.sha256 or "")
    assert he.sha256(data) == entry.sha256 and entry.bytes == len(data) < 2_000_000
    assert np.abs(decrypt_sent(enrolled, data) - update.delta).max() < 1e-6
    enrolled.db.conn.close()  # the last connection checkpoints the WAL into the file
    raw = (enrolled.home / "box.sqlite3").read_bytes()
    assert update.delta[:64].tobytes() not in raw  # no plaintext delta on disk


def test_placing_the_same_update_again_changes_nothing(enrolled: TestBox):
    update = make_update(2)
    outbox.place_update(enrolled.db, enrolled.home, update, keystore=enrolled.keystore)
    sha = outbox.pending(enrolled.db)[0].sha256
    outbox.place_update(enrolled.db, enrolled.home, update, keystore=enrolled.keystore)
    assert [e.sha256 for e in outbox.pending(enrolled.db)] == [sha]


def test_send_fail_resend_acknowledge_once_and_forget_the_ciphertext(enrolled: TestBox):
    outbox.place_update(enrolled.db, enrolled.home, make_update(3), keystore=enrolled.keystore, now=1000.0)
    sha = outbox.pending(enrolled.db)[0].sha256 or ""
    assert outbox.mark_sending(enrolled.db, sha, now=1010.0).state == "sending"
    failed = outbox.mark_failed(enrolled.db, sha, "link dropped")
    assert (failed.state, failed.attempts, failed.last_error) == ("queued", 1, "link dropped")
    assert outbox.mark_sending(enrolled.db, sha, now=1020.0).attempts == 2
    assert outbox.acknowledge(enrolled.db, sha, now=1030.0) is True
    assert outbox.acknowledge(enrolled.db, sha, now=1040.0) is False  # the coordinator's repeated ack is harmless
    assert outbox.acknowledge(enrolled.db, "0" * 64) is False
    assert outbox.pending(enrolled.db) == []
    with pytest.raises(SyncError, match="no ciphertext"):
        outbox.ciphertext(enrolled.db, sha)
    st = outbox.status(enrolled.db, now=2000.0)
    assert (st.counts["acknowledged"], st.pending, st.last_ack_at, st.last_attempt_at) == (1, 0, 1030.0, 1020.0)
    assert outbox.mark_sending(enrolled.db, sha).state == "acknowledged"  # a late retry does not reopen it


def test_a_rejected_update_is_closed_with_the_coordinators_reason(enrolled: TestBox):
    outbox.place_update(enrolled.db, enrolled.home, make_update(4), keystore=enrolled.keystore)
    sha = outbox.pending(enrolled.db)[0].sha256 or ""
    assert outbox.reject(enrolled.db, sha, "staleness 9 > bound 5")
    entry = outbox.get(enrolled.db, sha)
    assert entry is not None and (entry.state, entry.last_error) == ("rejected", "staleness 9 > bound 5")
    assert outbox.pending(enrolled.db) == [] and outbox.status(enrolled.db).pending == 0


def test_updates_survive_thirty_days_offline(enrolled: TestBox):
    t0 = 1_800_000_000.0
    ids = [outbox.place_update(enrolled.db, enrolled.home, make_update(10 + i), keystore=enrolled.keystore, now=t0 + i * DAY) for i in range(3)]
    later = t0 + 30 * DAY
    st = outbox.status(enrolled.db, now=later)
    assert (st.pending, st.counts["queued"], st.oldest_pending_age_s) == (3, 3, 30 * DAY)
    assert [e.update_id for e in outbox.pending(enrolled.db)] == ids  # oldest first, none dropped
    for e in outbox.pending(enrolled.db):
        outbox.mark_sending(enrolled.db, e.sha256 or "", now=later)
        outbox.acknowledge(enrolled.db, e.sha256 or "", now=later + 1)
    assert outbox.status(enrolled.db, now=later + 2).counts["acknowledged"] == 3


def test_without_a_kit_the_update_waits_sealed_and_is_encrypted_when_a_kit_arrives(tmp_path: Path, authority: Authority):
    box = TestBox.create(tmp_path / "box")
    update = make_update(5)
    outbox.place_update(box.db, box.home, update, keystore=box.keystore)
    st = outbox.status(box.db)
    assert (st.counts["awaiting_kit"], st.pending) == (1, 1)
    assert outbox.pending(box.db) == []  # durable, but nothing to send
    assert outbox.encrypt_awaiting(box.db, box.home, keystore=box.keystore) == []  # still no kit
    assert update.delta[:64].tobytes() not in bytes(box.db.execute("SELECT data FROM sync_outbox_payload").fetchone()[0])
    with pytest.raises(SyncError, match="not encrypted yet"):
        outbox.get(box.db, update.update_id).metadata()  # type: ignore[union-attr]
    box.enrol(authority)
    [sha] = outbox.encrypt_awaiting(box.db, box.home, keystore=box.keystore)
    [entry] = outbox.pending(box.db)
    assert (entry.sha256, entry.state, entry.he_version) == (sha, "queued", 1)
    assert np.abs(decrypt_sent(box, outbox.ciphertext(box.db, sha)) - update.delta).max() < 1e-6


def test_the_first_update_placed_after_enrolment_takes_the_waiting_ones_along(tmp_path: Path, authority: Authority):
    box = TestBox.create(tmp_path / "box")
    early = make_update(20)
    outbox.place_update(box.db, box.home, early, keystore=box.keystore)
    box.enrol(authority)
    outbox.place_update(box.db, box.home, make_update(21), keystore=box.keystore)
    assert [e.state for e in outbox.pending(box.db)] == ["queued", "queued"]
    assert outbox.pending(box.db)[0].update_id == early.update_id  # still the oldest, sent first
    box.db.conn.close()


def test_a_damaged_kit_does_not_cost_the_update(enrolled: TestBox):
    kit = enrolled.folder / "kit.json"
    good = kit.read_bytes()
    kit.write_bytes(good[: len(good) // 2])  # a torn copy
    update = make_update(8)
    outbox.place_update(enrolled.db, enrolled.home, update, keystore=enrolled.keystore)
    assert outbox.get(enrolled.db, update.update_id).state == "awaiting_kit"  # type: ignore[union-attr]
    kit.write_bytes(good)  # reinstalled
    [sha] = outbox.encrypt_awaiting(enrolled.db, enrolled.home, keystore=enrolled.keystore)
    assert np.abs(decrypt_sent(enrolled, outbox.ciphertext(enrolled.db, sha)) - update.delta).max() < 1e-6


def test_a_ciphertext_damaged_on_disk_is_never_sent(enrolled: TestBox):
    outbox.place_update(enrolled.db, enrolled.home, make_update(6), keystore=enrolled.keystore)
    sha = outbox.pending(enrolled.db)[0].sha256 or ""
    data = bytearray(enrolled.db.execute("SELECT data FROM sync_outbox_payload").fetchone()[0])
    data[5000] ^= 0x01  # one bit on disk
    enrolled.db.execute("UPDATE sync_outbox_payload SET data = ?", [bytes(data)])
    with pytest.raises(IntegrityError, match="no longer matches"):
        outbox.ciphertext(enrolled.db, sha)


def test_the_keystore_is_opened_from_the_homes_settings_when_not_given(enrolled: TestBox, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MAMMO_KEYSTORE_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("MAMMO_KEYSTORE_TPM", "off")
    monkeypatch.delenv("MAMMO_HOME", raising=False)
    update = make_update(7)
    outbox.place_update(enrolled.db, enrolled.home, update)  # the call local training makes
    assert outbox.get(enrolled.db, update.update_id).state == "queued"  # type: ignore[union-attr]


# --- SIGKILL at any stage ---------------------------------------------------------------------------------------------

CHILD = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from edge_agent.store import open_database
    from provisioning.keystore import FileKeystore
    from sync import outbox
    from tests.sync.federation import PASSPHRASE, make_update

    home = Path({home!r})
    db = open_database(home / "box.sqlite3")
    keystore = FileKeystore.open(home / "keystore.json", PASSPHRASE)
    stage = sys.argv[1]
    for i in range(int(sys.argv[2])):
        uid = outbox.place_update(db, home, make_update(i, update_id=f"u{{i}}"), keystore=keystore)
        sha = outbox.get(db, uid).sha256
        print("placed", sha, flush=True)
        if stage == "placed":
            time.sleep(60)
        outbox.mark_sending(db, sha)
        print("sending", sha, flush=True)
        if stage == "sending":
            time.sleep(60)
        if i % 2:
            outbox.acknowledge(db, sha)
        else:
            outbox.mark_failed(db, sha, "link dropped")
''')


def run_child(box: TestBox, stage: str, count: int) -> subprocess.Popen[str]:
    script = box.home.parent / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), home=str(box.home)))
    return subprocess.Popen([sys.executable, str(script), stage, str(count)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def wait_for(proc: subprocess.Popen[str], word: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(word):
            return line.split()[1]
    raise AssertionError(f"child exited ({proc.wait()}) before printing {word!r}")


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


def check_consistent(box: TestBox) -> None:
    """Every open row has a payload matching its hash; every closed row has none; no payload without a row."""
    db = open_database(box.home / "box.sqlite3")
    try:
        assert integrity_ok(db)
        for e in outbox.pending(db):
            assert he.sha256(outbox.ciphertext(db, e.sha256 or "")) == e.sha256
        orphans = db.execute("SELECT count(*) FROM sync_outbox_payload p LEFT JOIN sync_outbox o USING (update_id) "
                             "WHERE o.update_id IS NULL OR o.closed_at IS NOT NULL").fetchone()[0]
        assert orphans == 0
    finally:
        db.conn.close()


@pytest.mark.parametrize("stage", ["placed", "sending"])
def test_sigkill_after_each_step_leaves_the_update_to_be_sent_again(enrolled: TestBox, stage: str):
    enrolled.db.conn.close()
    proc = run_child(enrolled, stage, 1)
    sha = wait_for(proc, stage)
    kill(proc)
    check_consistent(enrolled)
    db = open_database(enrolled.home / "box.sqlite3")
    [entry] = outbox.pending(db)
    assert (entry.sha256, entry.state, entry.attempts) == (sha, "queued" if stage == "placed" else "sending", 0 if stage == "placed" else 1)
    assert np.abs(decrypt_sent(enrolled, outbox.ciphertext(db, sha)) - make_update(0).delta).max() < 1e-6
    assert outbox.acknowledge(db, sha)
    db.conn.close()


def test_sigkill_at_random_moments_never_leaves_a_half_update(enrolled: TestBox):
    enrolled.db.conn.close()
    rng = random.Random(13)
    for _ in range(3):
        proc = run_child(enrolled, "loop", 50)
        wait_for(proc, "placed")
        time.sleep(rng.uniform(0.0, 0.4))  # somewhere inside encrypting, inserting, sending or acknowledging
        kill(proc)
        check_consistent(enrolled)
    db = open_database(enrolled.home / "box.sqlite3")
    ids = [r[0] for r in db.execute("SELECT update_id FROM sync_outbox ORDER BY placed_at").fetchall()]
    assert ids and ids == [f"u{i}" for i in range(len(ids))]  # restarts re-place by id, never twice
    db.conn.close()
