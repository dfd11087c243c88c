"""The coordinator holds no secret key: it works with the public context only, cannot decrypt, and keeps nothing secret on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.errors import SyncError
from provisioning import he as he_material
from sync import he, outbox
from sync.coordinator import store
from sync.coordinator.strategy import StrategyConfig, aggregate, plan_round
from tests.sync.federation import SPEC, TestBox, make_update, new_authority


def secret_key_bytes(secret_context: bytes, tmp: Path) -> bytes:
    """The clinics' secret key as SEAL serialises it (what must never reach the coordinator)."""
    ctx = he_material.load_context(secret_context, need_secret=True)
    path = tmp / "sk.bin"
    ctx.secret_key().data.save(str(path))
    data = path.read_bytes()
    path.unlink()
    return data


def test_a_coordinator_round_runs_on_the_public_context_and_cannot_decrypt(tmp_path: Path):
    authority = new_authority(tmp_path / "authority")
    box = TestBox.create(tmp_path / "box")
    box.enrol(authority)
    home = tmp_path / "coordinator"
    db = store.open_store(home)
    (home / "he-public.tenseal").write_bytes(authority.he_public_context())  # all the HE material the coordinator is given
    public = he_material.load_context((home / "he-public.tenseal").read_bytes(), need_secret=False)
    assert not public.is_private() and not public.has_secret_key()
    with pytest.raises(Exception, match="secret key"):
        he_material.load_context((home / "he-public.tenseal").read_bytes(), need_secret=True)

    store.register_base_model(db, "0.1.0", SPEC.digest)
    update = make_update(1)
    outbox.place_update(box.db, box.home, update, keystore=box.keystore)
    entry = outbox.pending(box.db)[0]
    store.receive(db, store.Incoming.from_metadata(box.keystore.box_id, entry.metadata()), outbox.ciphertext(box.db, entry.sha256 or ""), public_ctx=public)
    plan = plan_round(store.buffer(db), current_generation=0, spec_digest=SPEC.digest, now=1e12, config=StrategyConfig(buffer_k=1))
    assert plan is not None
    number = store.commit_round(db, plan, aggregate(plan, public, lambda sha: store.ciphertext(db, sha)))
    encrypted = store.round_aggregate(db, number)
    db.conn.close()

    with pytest.raises(SyncError, match="no secret key"):
        he.decrypt(public, encrypted)
    vector = he.load(public, encrypted, fresh=False)[0]
    with pytest.raises(ValueError, match="secret_key"):  # TenSEAL itself: the key is simply not there
        vector.decrypt()

    key = secret_key_bytes(box.he_secret(), tmp_path)
    windows = [key[i : i + 48] for i in range(64, len(key) - 48, len(key) // 16)]
    assert all(w in box.he_secret() for w in windows)  # the scan below would find the key if it were there
    for path in home.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(w in content for w in windows), f"{path} holds the clinics' secret key"
    box.db.conn.close()
