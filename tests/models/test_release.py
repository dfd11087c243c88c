"""The shipped release: complete, small, verified, and honest about itself."""

from __future__ import annotations

import json
import shutil

import pytest

from models.errors import ReleaseError
from models.release_files import MODEL_FILES, load_release, suspicion, triage, verify_manifest


def test_release_holds_all_model_files_card_and_manifest(release_dir):
    names = {p.name for p in release_dir.iterdir()}
    assert set(MODEL_FILES) | {"MODEL_CARD.md", "manifest.json", "model.json"} <= names
    manifest = json.loads((release_dir / "manifest.json").read_text())
    assert set(manifest["files"]) == names - {"manifest.json", "manifest.sig"}  # the signature signs the manifest


def test_manifest_sha256_matches_every_file(release_dir):
    verify_manifest(release_dir)


def test_a_tampered_model_is_refused(release_dir, tmp_path):
    copy = tmp_path / "rel"
    shutil.copytree(release_dir, copy)
    p = copy / "model_int8.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match="reinstall"):
        load_release(copy)


def test_int8_files_are_well_under_the_plan_budget(release_dir):
    total = sum((release_dir / n).stat().st_size for n in ("model_int8.onnx", "model_int8.tflite"))
    assert total < 14.7e6 / 4


def test_operating_points_are_ordered_and_used_for_triage(release_dir):
    rel = load_release(release_dir)
    op = rel.operating_points
    assert -0.5 <= op.review <= op.priority <= 1.0
    assert 0 < op.beta < 1 and 0 < op.fallback_p_other < 1
    assert triage(-1.0, op) == "no_suspicious_finding"
    assert triage(op.review, op) == "radiologist_review"
    assert triage(1.0, op) == "priority_radiologist_review"


def test_the_other_breast_lowers_a_shared_score():
    """Suspicion: the same probability counts for less when the other breast looks the same."""
    assert suspicion(0.6, 0.6, 0.5, 0.3) < suspicion(0.6, 0.1, 0.5, 0.3)
    assert suspicion(0.6, None, 0.5, 0.3) == pytest.approx(0.45)
    assert suspicion(0.6, None, 0.5, None) == pytest.approx(0.3)


def test_model_card_reports_cv_with_cis_and_intended_use(release_dir):
    card = (release_dir / "MODEL_CARD.md").read_text()
    for needle in ("never a diagnosis", "95% CI", "woman", "Known limits", "EfficientNet-B4", "0.90"):
        assert needle in card, needle
    info = json.loads((release_dir / "model.json").read_text())
    assert info["cv_metrics"]["n_women"] == 129


def test_a_rewritten_manifest_never_lists_its_own_signature(release_dir, tmp_path):
    """manifest.sig signs manifest.json, so listing it inside would make every signed release fail its own manifest."""
    from models.release_files import write_manifest

    copy = tmp_path / "rel"
    shutil.copytree(release_dir, copy)
    (copy / "manifest.sig").write_text("c2lnbmF0dXJl\n")
    write_manifest(copy, "9.9.9")
    manifest = json.loads((copy / "manifest.json").read_text())
    assert "manifest.sig" not in manifest["files"] and "model.json" in manifest["files"]
    verify_manifest(copy)
