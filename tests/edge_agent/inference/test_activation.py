import json

import pytest

from edge_agent.errors import ModelError
from edge_agent.inference.activation import ModelRegistry


def test_first_start_activates_the_newest_shipped_release_after_its_self_test(box, shipped_dir):
    reg = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir)
    assert reg.active() is None
    act = reg.ensure_active()
    assert act.reason == "first start" and act.selftest["passed"] and act.selftest["images"] >= 4
    assert [r.active for r in reg.releases()] == [True]
    assert reg.ensure_active().id == act.id  # no second activation


def test_tampered_model_file_is_refused_and_the_previous_model_stays_active(box, shipped_dir, release_dir):
    reg = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir)
    before = reg.ensure_active()
    data = bytearray((release_dir / "model_int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (release_dir / "model_int8.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its SHA-256"):
        reg.activate(str(release_dir), by="tech", reason="test")
    assert reg.active().id == before.id


def test_release_whose_model_disagrees_with_its_self_test_is_refused(box, shipped_dir, release_dir, release_signer):
    import numpy as np

    from models.release_files import write_manifest

    reg = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir, pinned_keys=release_signer.pinned)
    before = reg.ensure_active()
    with np.load(release_dir / "selftest.npz") as ref:
        arrays = dict(ref)
    arrays["expected_p_abnormal"] = 1.0 - arrays["expected_p_abnormal"]  # a model that answers the opposite
    np.savez(release_dir / "selftest.npz", **arrays)
    write_manifest(release_dir, json.loads((release_dir / "model.json").read_text())["version"])  # manifest consistent: only the self-test can catch it
    release_signer.sign(release_dir)  # and signed by a trusted key
    with pytest.raises(ModelError, match="Self-test .* failed"):
        reg.activate(str(release_dir), by="tech", reason="test")
    assert reg.active().id == before.id


def test_rollback_returns_to_the_previous_release(box, shipped_dir, release_dir):
    reg = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir)
    first = reg.ensure_active()
    reg.activate(str(release_dir), by="tech", reason="new model")
    back = reg.rollback(by="tech")
    assert back.path == first.path and back.reason.startswith("rollback from")
    assert [a.path for a in reg.history()] == [first.path, release_dir.resolve(), first.path]


def test_unknown_release_and_nothing_to_roll_back_are_clear_errors(box, shipped_dir):
    reg = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir)
    with pytest.raises(ModelError, match="mammo model list"):
        reg.activate("9.9.9", by="tech", reason="x")
    reg.ensure_active()
    with pytest.raises(ModelError, match="no earlier model"):
        reg.rollback(by="tech")
