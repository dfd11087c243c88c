"""A gate-approved adaptation serves the box: built, signed with the box's own key, self-tested, activated, screened with.

Real parts throughout: the clinic box of ``conftest`` (keystore, encrypted
images, ledger), the change of the real DP round ``reference_round``, the real
derived-release builder (ONNX export, INT8 quantisation, self-test), the box's
activation path, and the inference handler scoring a new study with it.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.box import open_box
from edge_agent.errors import ModelError
from edge_agent.inference.activation import ModelRegistry, local_release_key, sign_release
from edge_agent.inference.worker import InferenceHandler
from edge_agent.ingest import mg
from edge_agent.ingest.image_store import ImageStore
from edge_agent.ingest.service import IngestPaths, IngestService
from edge_agent.learning import gate, ledger, runner, serve
from edge_agent.store import open_database
from models.release_files import write_manifest
from models.runtime import Screener

from .conftest import ROUND, SEED


def approved() -> gate.GateResult:
    """The real gate's rule on 40 held-back women where the adapted model ranks abnormal studies far better."""
    labels = np.array([0, 1] * 20)
    rng = np.random.default_rng(0)
    verdict = gate.judge(labels, rng.normal(size=40) + 0.2 * labels, rng.normal(size=40) + 3.0 * labels, margin=0.02, min_cases=5)
    assert verdict.decision == "serve", verdict.reason
    return verdict


@pytest.fixture(scope="module")
def served_clinic(clinic_template, reference_round, tmp_path_factory):
    """A clinic box that served the reference round's adaptation (built once: the ONNX export and self-test take a while)."""
    from .conftest import copy_clinic

    clinic = copy_clinic(clinic_template, tmp_path_factory.mktemp("served") / "clinic")
    settings = clinic.settings()
    box = open_box(settings, interactive=False)
    try:
        registry = ModelRegistry(box.db, settings, keystore=box.keystore)
        base = registry.active()
        release, digest = registry.verify(base.path)
        update = reference_round["update"]
        out = serve.serve(box.db, settings, box.keystore, release, digest, update.delta, reference_round["outcome"].round_id, approved(),
                          examples=update.example_count, epsilon=update.epsilon)
    finally:
        box.close()
    return clinic, out, base, update.delta


def test_an_approved_adaptation_is_built_signed_by_the_box_and_screens_the_next_study(served_clinic):
    clinic, out, base, update_delta = served_clinic
    assert out.activated and out.reason == "activated", out
    assert out.version == f"{base.version}+local.{out.version.rsplit('.', 1)[1]}"
    settings = clinic.settings()
    box = open_box(settings, interactive=False)
    ingest = IngestService.from_box(box, workers=1)
    try:
        registry = ModelRegistry(box.db, settings, keystore=box.keystore)
        act = registry.active()
        assert act.version == out.version and act.activated_by == "learning" and act.generation == base.version
        assert "this box's local key" in act.selftest["signed_by"] and act.selftest["passed"]
        assert [r.source for r in registry.releases() if r.version == out.version] == ["local"]
        info = json.loads((act.path / "model.json").read_text())
        assert info["local"]["base_version"] == base.version and info["local"]["base_manifest_sha256"] == base.manifest_sha256
        assert info["local"]["gate"]["decision"] == "serve" and not (act.path / "model.tflite").exists()
        # only the trainable part changed, by exactly the round's change
        import torch

        from models.network import model_from_state_dict
        from models.trainable import spec_of

        old = torch.load(base.path / "model_fp32.pt", weights_only=True)
        new = torch.load(act.path / "model_fp32.pt", weights_only=True)
        names = spec_of(model_from_state_dict(old)).names
        assert all(torch.equal(old[k], new[k]) for k in old if k not in set(names))
        change = np.concatenate([(new[k] - old[k]).flatten().numpy() for k in names])
        np.testing.assert_allclose(change, update_delta, atol=1e-6)

        # a new study is screened with the adapted model
        patient = mg.fake_patient(999)
        uid = mg._uid("after-serving", 1)
        sent = [ingest.ingest_bytes(mg.to_bytes(mg.mammogram(mg.synthetic_pixels(9990 + i, lat, 128), patient=patient, laterality=lat, view=view,
                                                             study_uid=uid, instance_number=i + 1, seed=999)), source="test")
                for i, (lat, view) in enumerate(mg.SCREENING_VIEWS)]
        store = ImageStore(IngestPaths.of(settings).images, box.keystore.master_key())
        handler = InferenceHandler(box.queue, store, registry, lambda rel: Screener(rel, backend="onnx-int8", threads=1), profile="cpu-small")
        while (job := box.queue.claim("infer")) is not None:
            box.queue.ack(job, within=handler(job))
        row = box.db.execute("SELECT model_version, status FROM infer_results WHERE study_uid = ?", [sent[0].study_uid]).fetchone()
        assert row == (out.version, "done")

        # the federation still hears of the base release, so it does not push the base back over the adaptation
        from sync.box_side import _active_version

        assert _active_version(settings, box.db) == base.version
        # rollback returns to the signed base
        assert registry.rollback(by="technician").version == base.version
    finally:
        ingest.close()
        box.close()


def _variant(clinic, out, tmp_path, edit, key: Ed25519PrivateKey | None = None):
    """A copy of the served release with model.json edited, its manifest rewritten and signed (by the box's own key unless ``key``)."""
    settings = clinic.settings()
    box = open_box(settings, interactive=False)
    try:
        src = settings.models_dir / out.version
        dst = settings.models_dir / f"{out.version}x"
        shutil.copytree(src, dst)
        info = json.loads((dst / "model.json").read_text())
        edit(info)
        (dst / "model.json").write_text(json.dumps(info))
        write_manifest(dst, info["version"])
        sign_release(dst, key or local_release_key(box.keystore))
        return dst
    finally:
        box.close()


@pytest.mark.parametrize(("edit", "foreign", "message"), [
    (lambda i: None, True, "does not verify with this box's local release key"),
    (lambda i: i["local"]["gate"].update(decision="candidate"), False, "the evaluation gate did not approve it"),
    (lambda i: i["local"].update(base_manifest_sha256="0" * 64), False, "has changed since the adaptation was made"),
    (lambda i: i["local"].update(base_version="9.9.9"), False, "is no longer on this box"),
], ids=["another-box-key", "gate-not-serve", "base-changed", "base-gone"])
def test_a_local_release_the_box_did_not_approve_on_a_trusted_base_is_refused(served_clinic, tmp_path, edit, foreign, message):
    clinic, out, _, _ = served_clinic
    path = _variant(clinic, out, tmp_path, edit, Ed25519PrivateKey.generate() if foreign else None)
    try:
        settings = clinic.settings()
        box = open_box(settings, interactive=False)
        try:
            registry = ModelRegistry(box.db, settings, keystore=box.keystore)
            before = registry.active()
            with pytest.raises(ModelError, match=message):
                registry.activate(str(path), by="technician", reason="test")
            assert registry.active() == before
            with pytest.raises(ModelError, match="only the box that made it"):  # without the keystore nothing can verify it
                ModelRegistry(box.db, settings).verify(settings.models_dir / out.version)
        finally:
            box.close()
    finally:
        shutil.rmtree(path)



def test_the_runner_serves_what_the_gate_approves_and_only_that(reference_round):
    """The reference round's verdict depends on which women the box holds back (keyed by the box's own secret): either way
    the runner must have done what the verdict says."""
    out = reference_round["outcome"]
    settings = reference_round["clinic"].settings()
    box = open_box(settings, interactive=False)
    try:
        active = ModelRegistry(box.db, settings).active()
    finally:
        box.close()
    assert out.gate_compared_with == "0.1.0"
    if out.gate["decision"] == "serve":
        assert out.served["activated"] and out.served["version"] == f"0.1.0+local.{out.round_id[:8]}" == active.version
        assert out.gate["weights_path"] == out.served["path"] == str(active.path)
    else:
        assert out.served is None and out.gate["weights_path"] is None and active.version == "0.1.0"
        assert not any(settings.models_dir.glob("*local*"))


def test_a_round_whose_gate_approves_ends_with_the_box_screening_with_its_adaptation(clinic):
    """The runner end to end with a known verdict (the rule itself: test_gate.py): the round's own change is built, signed,
    activated and recorded, and the update still goes out on the base."""
    def approve(labels, active, adapted, margin, min_cases, women=None):
        return gate.GateResult("serve", 0.6, 0.8, len(labels), int(np.sum(labels)), "test verdict: approve", (0.1, 0.3))

    placed: list = []
    out = runner.run(clinic.settings(**ROUND), seed=SEED, judge=approve, sink=lambda db, home, update: placed.append(update) or update.update_id)
    assert out.status == "done" and out.gate_compared_with == "0.1.0", out
    assert out.served == {"version": f"0.1.0+local.{out.round_id[:8]}", "path": out.gate["weights_path"], "activated": True, "reason": "activated"}
    assert any("adapted model" in r for r in out.reasons) and placed[0].base_model_version == "0.1.0"
    settings = clinic.settings()
    box = open_box(settings, interactive=False)
    try:
        registry = ModelRegistry(box.db, settings, keystore=box.keystore)
        act = registry.active()
        assert act.version == out.served["version"] and act.activated_by == "learning" and "test verdict: approve" in act.reason
        info = registry.verify(act.path)[0].info["local"]
        assert info["round_id"] == out.round_id and info["epsilon"] == pytest.approx(out.epsilon_round) and info["examples"] == out.examples
        rounds = ledger.rounds(box.db)
        assert [(r.state, r.base_model_version) for r in rounds] == [("done", "0.1.0")] and "activated" in rounds[0].detail
    finally:
        box.close()


def test_with_serving_off_an_approved_adaptation_is_built_but_not_activated(clinic):
    def approve(labels, active, adapted, margin, min_cases, women=None):
        return gate.GateResult("serve", 0.6, 0.8, len(labels), int(np.sum(labels)), "test verdict: approve", (0.1, 0.3))

    out = runner.run(clinic.settings(MAMMO_TRAIN_SERVE_LOCAL="false", **ROUND), seed=SEED, judge=approve, sink=lambda db, home, u: u.update_id)
    assert out.served["activated"] is False and "train_serve_local is off" in out.served["reason"]
    settings = clinic.settings()
    box = open_box(settings, interactive=False)
    try:
        registry = ModelRegistry(box.db, settings, keystore=box.keystore)
        assert registry.active().version == "0.1.0"
        assert [r.source for r in registry.releases() if r.version == out.served["version"]] == ["local"]
    finally:
        box.close()


def test_while_an_adaptation_serves_the_next_round_trains_from_its_base_and_is_judged_against_it(served_clinic, tmp_path):
    from .conftest import copy_clinic

    served, out, base, _ = served_clinic
    clinic = copy_clinic(served, tmp_path / "clinic")
    settings = clinic.settings(**ROUND)
    box = open_box(settings, interactive=False)
    try:  # a technician may activate the adaptation again after a rollback, like any release
        assert ModelRegistry(box.db, settings, keystore=box.keystore).activate(out.version, by="technician", reason="test").version == out.version
        uid, label = clinic.studies[0]  # a radiologist confirms a study again: one new confirmed example
        box.db.execute("INSERT INTO kiosk_feedback (study_uid, username, role, agrees, birads, density, category_source, created_at)"
                       " VALUES (?, 'rad', 'radiologist', 1, ?, 'B', 'radiologist', ?)", [uid, 4 if label else 1, time.time()])
    finally:
        box.close()

    placed: list = []
    second = runner.run(settings, seed=SEED + 1, sink=lambda db, home, update: placed.append(update) or update.update_id)
    assert second.status == "done", second
    # trained from the base release, in its generation: the update and the privacy budget stay the federation's
    assert second.base_model_version == base.version and placed[0].base_model_version == base.version
    assert second.gate_compared_with == out.version  # judged against the model screening now
    db = open_database(clinic.home / "box.sqlite3")
    try:
        assert [r.base_model_version for r in ledger.rounds(db)] == [base.version] and ledger.spent(db, out.version) == 0.0
    finally:
        db.conn.close()
