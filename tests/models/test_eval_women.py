"""``mammo eval --images``: image-level keys kept, and a ``women`` object through the box's aggregation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_agent.inference.triage import ViewScore, aggregate
from models.cli import main
from models.data import load_pixels, read_folder
from models.release_files import load_release
from models.runtime import Screener


def test_eval_reports_each_woman_triaged_by_the_box_rule(release_dir, synthetic_folder, capsys):
    folder = synthetic_folder(6)
    assert main(["eval", "--images", str(folder), "--json", "--release", str(release_dir), "--n-boot", "200"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("auc_abnormal", "auc_abnormal_ci95", "sens_at_90spec", "spec_at_85sens", "triage_counts"):
        assert key in res  # the image-level figures stay
    assert sum(res["triage_counts"].values()) == 12
    women = res["women"]
    assert set(women) >= {"n", "n_abnormal", "auc", "auc_ci95", "sensitivity_review", "specificity_review",
                          "sensitivity_priority", "specificity_priority", "triage_counts"}
    # written out here: each woman's two images scored by the model, paired, and put through the box's aggregate
    rel = load_release(release_dir)
    pts = rel.operating_points
    screener = Screener(rel, backend="onnx-int8", threads=2)
    records = read_folder(folder)
    by: dict[str, list] = {}
    for r in records:
        by.setdefault(r.woman, []).append((r, screener.score(load_pixels(r)).p_abnormal))
    y, levels = [], []
    for pair in by.values():
        (r1, p1), (r2, p2) = pair
        views = [ViewScore(r1.ref, "R", "MLO", p1, 0, p1 - pts.beta * p2, 0, 0, ""),
                 ViewScore(r2.ref, "L", "MLO", p2, 0, p2 - pts.beta * p1, 0, 0, "")]
        levels.append(aggregate(views, [], pts, required=(("R", "MLO"), ("L", "MLO"))).triage)
        y.append(max(r1.abnormal, r2.abnormal))
    y, lv = np.array(y), np.array(levels)
    assert women["n"] == 6 and women["n_abnormal"] == int(y.sum())
    assert women["triage_counts"] == {t: levels.count(t) for t in women["triage_counts"]}
    assert women["sensitivity_review"] == pytest.approx(np.mean(lv[y == 1] != "no_suspicious_finding"))
    assert women["specificity_review"] == pytest.approx(np.mean(lv[y == 0] == "no_suspicious_finding"))
    lo, hi = women["auc_ci95"]
    assert lo <= women["auc"] <= hi
