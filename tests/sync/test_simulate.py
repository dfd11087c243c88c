"""``mammo fl simulate`` end to end on a tiny SYNTHETIC folder: real training, real DP, real CKKS, real CLI process."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _folder(root: Path, women_per_clinic: int = 4) -> Path:
    """A mini-MIAS-shaped folder: clinics F, G, D, each with normal women and women with a finding in one breast."""
    from PIL import Image

    from models.synthetic import generate

    (root / "images").mkdir(parents=True)
    rows = ["ref,file,tissue,label_abnormal,label_malignant,patient_pair,side"]
    k, w = 0, 0
    for tissue, density in (("F", "A"), ("G", "B"), ("D", "D")):
        for j in range(women_per_clinic):
            w += 1
            for side in ("R", "L"):
                k += 1
                finding = "mass" if (j % 2 and side == "R") else None
                s = generate(seed=500 + k, density=density, finding=finding, size=128, laterality=side)
                Image.fromarray(s.image).save(root / "images" / f"syn{k:03d}.png")
                rows.append(f"syn{k:03d},images/syn{k:03d}.png,{tissue},{int(s.abnormal)},{int(s.malignant)},{w},{side}")
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    return root


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAMMO_HOME": "/nonexistent-not-needed"}
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", "fl", "simulate", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)


def test_simulate_prints_one_json_object_with_every_arm_and_the_privacy_spent(tmp_path):
    data = _folder(tmp_path / "syn")
    out_file = tmp_path / "full.json"
    r = _run("--data", str(data), "--folds", "2", "--rounds", "2", "--seed", "3", "--backbone-epochs", "1",
             "--synthetic-pretrain", "0", "--plain-epochs", "2", "--dp-steps", "2", "--n-boot", "50",
             "--out", str(out_file), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    # strict JSON: NaN or Infinity (an undefined AUC, a non-private epsilon) must be null
    out = json.loads(r.stdout.strip().splitlines()[-1], parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert {"local_only", "local_only_dp", "federated_he_dp", "federated_he", "centralized"} <= set(out["arms"])
    assert out["women_by_clinic"] == {"D": 4, "F": 4, "G": 4}
    for arm, blocks in out["arms"].items():
        assert blocks["all"]["n_women"] == 12, arm  # every woman held out exactly once, whatever the arm
        assert {"F", "G", "D"} <= set(blocks)
    # each clinic's federated DP rounds together stay within the budget, as planned by the box's accountant
    for fold in out["federated_by_fold"]:
        assert all(0 < e <= 1.0 + 1e-6 for e in fold["epsilon_by_clinic"].values())
        assert fold["bytes_per_update"] < 2_000_000
    for fold in out["local_dp_adaptation"]["privacy_by_fold"]:
        assert all(0 < v["epsilon"] <= 1.0 + 1e-6 for v in fold.values())
    assert "after_dp - before" in out["local_dp_adaptation"]
    full = json.loads(out_file.read_text())
    refs = {r["ref"] for r in full["predictions"]["federated_he_dp"]}
    assert len(refs) == 24 and refs == {r["ref"] for r in full["predictions"]["local_only"]}
    report = _run("--report", str(out_file))
    assert report.returncode == 0, report.stderr[-2000:]
    assert "| federated, HE + DP |" in report.stdout and "### Local DP adaptation per clinic" in report.stdout


def test_simulate_refuses_a_folder_without_density_classes(tmp_path):
    data = _folder(tmp_path / "syn", women_per_clinic=2)
    csv = (data / "images.csv").read_text().splitlines()
    csv = [csv[0]] + [",".join(v if i != 2 else "" for i, v in enumerate(line.split(","))) for line in csv[1:]]
    (data / "images.csv").write_text("\n".join(csv) + "\n")
    r = _run("--data", str(data), "--folds", "2", "--json")
    assert r.returncode == 2
    assert "tissue" in r.stderr and "F, G or D" in r.stderr


def test_merge_refuses_partials_that_miss_a_fold_or_differ_in_config():
    from sync.simulate import SimConfig, merge

    cfg = SimConfig(data="x", folds=3)
    part = {"config": dataclasses.asdict(cfg), "folds": [0, 1], "rows": {}, "local_dp": {}, "federated": {}, "seconds": 1.0,
            "n_women": 3, "women_by_clinic": {}}
    with pytest.raises(ValueError, match="not each of 0..2 once"):
        merge([part])
    with pytest.raises(ValueError, match="not each of 0..2 once"):
        merge([part, {**part, "folds": [1, 2]}])
    with pytest.raises(ValueError, match="different configs"):
        merge([part, {**part, "folds": [2], "config": {**part["config"], "seed": 1}}])
