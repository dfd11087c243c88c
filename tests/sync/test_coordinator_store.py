"""The coordinator's store with real boxes' outboxes, real ciphertexts and real SQLite files: receive, dedupe, rounds, releases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from edge_agent.errors import IntegrityError, SyncError
from provisioning import he as he_material
from provisioning.authority import Authority
from sync import he, outbox
from sync.coordinator import store
from sync.coordinator.strategy import StrategyConfig, aggregate, plan_round
from sync.update import LocalUpdate
from tests.sync.federation import SPEC, TestBox, make_update, new_authority

CFG = StrategyConfig(buffer_k=3, deadline_s=3600.0, min_updates=1, max_staleness=1)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return new_authority(tmp_path_factory.mktemp("federation") / "authority")


@pytest.fixture(scope="module")
def boxes(tmp_path_factory: pytest.TempPathFactory, authority: Authority) -> Iterator[list[TestBox]]:
    made = []
    for i in range(3):
        box = TestBox.create(tmp_path_factory.mktemp(f"clinic{i}") / "box")
        box.enrol(authority)
        made.append(box)
    yield made
    for box in made:
        box.db.conn.close()


@pytest.fixture
def public(authority: Authority) -> ts.Context:
    return he_material.load_context(authority.he_public_context(), need_secret=False)


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[object]:
    db = store.open_store(tmp_path / "coordinator")
    store.register_base_model(db, "0.1.0", SPEC.digest, now=0.0)
    yield db
    db.conn.close()


def send(box: TestBox, update: LocalUpdate) -> tuple[store.Incoming, bytes]:
    """What a box's ClientApp hands over: the outbox entry's metadata and its ciphertext."""
    outbox.place_update(box.db, box.home, update, keystore=box.keystore)
    entry = outbox.get(box.db, update.update_id)
    assert entry is not None and entry.sha256
    return store.Incoming.from_metadata(box.keystore.box_id, entry.metadata()), outbox.ciphertext(box.db, entry.sha256)


def test_the_same_upload_twice_is_one_update_reported_as_duplicate(coord, boxes, public):
    incoming, data = send(boxes[0], make_update(1))
    first = store.receive(coord, incoming, data, public_ctx=public, config=CFG, now=10.0)
    again = store.receive(coord, incoming, data, public_ctx=public, config=CFG, now=11.0)
    assert (first.status, again.status) == ("accepted", "duplicate") and again.acknowledged
    assert [b.sha256 for b in store.buffer(coord)] == [incoming.sha256]
    assert store.status(coord)["duplicates_received"] == 1
    assert outbox.acknowledge(boxes[0].db, again.sha256)


def test_a_reencrypted_copy_of_the_same_update_is_a_duplicate_too(coord, boxes, public):
    update = make_update(2)
    incoming, data = send(boxes[0], update)
    store.receive(coord, incoming, data, public_ctx=public, config=CFG)
    ctx = he_material.load_context(boxes[0].he_secret(), need_secret=True)
    other = he.encrypt(ctx, update.delta)  # CKKS is randomised: another hash for the same update_id
    copy = store.Incoming.from_metadata(incoming.box_id, {**outbox.get(boxes[0].db, update.update_id).metadata(), "sha256": he.sha256(other)})  # type: ignore[union-attr]
    receipt = store.receive(coord, copy, other, public_ctx=public, config=CFG)
    assert receipt.status == "duplicate" and "received before" in (receipt.reason or "")
    assert len(store.buffer(coord)) == 1


def test_bytes_damaged_in_transit_are_not_stored_and_can_be_sent_again(coord, boxes, public):
    incoming, data = send(boxes[1], make_update(3))
    broken = bytearray(data)
    broken[-1] ^= 1
    with pytest.raises(IntegrityError, match="arrived damaged"):
        store.receive(coord, incoming, bytes(broken), public_ctx=public, config=CFG)
    assert store.buffer(coord) == []
    assert store.receive(coord, incoming, data, public_ctx=public, config=CFG).status == "accepted"


@pytest.mark.parametrize("case", ["unknown_base", "wrong_count", "foreign_spec", "aggregate_as_update", "other_he_key"])
def test_unusable_updates_are_rejected_for_good_and_stay_rejected(coord, boxes, public, case):
    incoming, data = send(boxes[2], make_update(4, base="9.9.9" if case == "unknown_base" else "0.1.0"))
    if case == "wrong_count":
        incoming = store.Incoming.from_metadata(incoming.box_id, {**incoming.__dict__, "value_count": 100})
    elif case == "foreign_spec":
        incoming = store.Incoming.from_metadata(incoming.box_id, {**incoming.__dict__, "spec_digest": "f" * 64})
    elif case == "aggregate_as_update":
        data = he.weighted_sum(public, [(1.0, data)])
        incoming = store.Incoming.from_metadata(incoming.box_id, {**incoming.__dict__, "sha256": he.sha256(data)})
    he_version = 2 if case == "other_he_key" else 1  # as after the authority rotated the clinics' CKKS key
    receipt = store.receive(coord, incoming, data, public_ctx=public, config=CFG, he_version=he_version)
    assert receipt.status == "rejected" and receipt.reason and not receipt.acknowledged
    assert store.receive(coord, incoming, data, public_ctx=public, config=CFG, he_version=he_version).status == "rejected"  # a resend gets the same answer
    assert store.buffer(coord) == []
    assert outbox.reject(boxes[2].db, outbox.pending(boxes[2].db)[-1].sha256 or "", receipt.reason or "")


def test_a_full_round_from_three_outboxes_to_a_new_generation(coord, boxes, public, tmp_path):
    updates = [make_update(10 + i, examples=n) for i, n in enumerate((10, 40, 25))]
    shas = []
    for i, (box, update) in enumerate(zip(boxes, updates, strict=True)):
        incoming, data = send(box, update)
        assert store.receive(coord, incoming, data, public_ctx=public, config=CFG, now=100.0 + i).status == "accepted"
        shas.append(incoming.sha256)
    model = store.current_model(coord)
    plan = plan_round(store.buffer(coord), current_generation=model.generation, spec_digest=model.spec_digest, now=200.0, config=CFG)
    assert plan is not None and plan.trigger == "buffer_k"
    encrypted = aggregate(plan, public, lambda sha: store.ciphertext(coord, sha), expect_values=SPEC.size)
    number = store.commit_round(coord, plan, encrypted, now=201.0)
    assert store.buffer(coord) == [] and store.open_round(coord) == number
    with pytest.raises(SyncError, match="no ciphertext"):
        store.ciphertext(coord, shas[0])  # consumed ciphertexts are dropped

    # A clinic decrypts the aggregate: the example-weighted mean of the three deltas.
    secret = he_material.load_context(boxes[0].he_secret(), need_secret=True)
    mean = he.decrypt(secret, store.round_aggregate(coord, number))
    expected = sum(u.example_count * u.delta.astype(np.float64) for u in updates) / sum(u.example_count for u in updates)
    assert np.abs(mean - expected).max() < 1e-6

    contributions = store.round_contributions(coord, number)
    assert [c["sha256"] for c in contributions] == shas and sum(c["share"] for c in contributions) == pytest.approx(1.0)
    with pytest.raises(SyncError, match="not yet released"):
        store.commit_round(coord, plan, encrypted)
    model = store.record_release(coord, number, "0.1.0+fl1", manifest=b"{}", signature=b"sig", now=300.0)
    assert (model.generation, model.version, model.round) == (1, "0.1.0+fl1", number)
    status = store.status(coord, now=400.0)
    assert status["updates"]["aggregated"] == 3 and status["open_round"] is None and len(status["boxes"]) == 3
    assert [m["version"] for m in status["models"]] == ["0.1.0", "0.1.0+fl1"]

    # An update trained on 0.1.0 is now one generation stale: still in (bound 1), weighted down.
    incoming, data = send(boxes[0], make_update(20))
    assert store.receive(coord, incoming, data, public_ctx=public, config=CFG, now=500.0).status == "accepted"
    [buffered] = store.buffer(coord)
    assert buffered.base_generation == 0


def test_the_store_reopens_with_its_rows_and_is_not_a_box_database(tmp_path: Path, boxes, public):
    home = tmp_path / "coordinator"
    db = store.open_store(home)
    store.register_base_model(db, "0.1.0", SPEC.digest)
    incoming, data = send(boxes[1], make_update(30))
    store.receive(db, incoming, data, public_ctx=public, config=CFG)
    db.conn.close()
    db = store.open_store(home)
    assert [b.sha256 for b in store.buffer(db)] == [incoming.sha256]
    assert "jobs" not in db.table_names() and "sync_outbox" not in db.table_names()
    with pytest.raises(SyncError, match="base model is 0.1.0"):
        store.register_base_model(db, "0.2.0", SPEC.digest)
    db.conn.close()
