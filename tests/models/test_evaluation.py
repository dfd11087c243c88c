"""Metrics: exact on known cases; CIs resample women, not images."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation import (
    bootstrap_ci,
    pointing_hit,
    roc_auc,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
    summarize,
)


def test_auc_known_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([0, 0, 1, 1], [0.1, 0.3, 0.2, 0.4]) == 0.75
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_operating_points():
    y = np.array([0] * 10 + [1] * 10)
    s = np.concatenate([np.arange(10) / 10, np.arange(10) / 10 + 0.45])
    # 90% specificity: threshold at the 9th negative (0.8); positives above it: 0.85..1.35 -> 6 of 10
    assert sensitivity_at_specificity(y, s, 0.9) == pytest.approx(0.6)
    # 85% sensitivity: threshold at the 9th positive (0.55); negatives below it: 0.0..0.5 -> 6 of 10
    assert specificity_at_sensitivity(y, s, 0.85) == pytest.approx(0.6)


def test_bootstrap_ci_brackets_the_estimate_and_shrinks_with_data():
    rng = np.random.default_rng(0)

    def data(n):
        y = rng.integers(0, 2, n)
        return y, y + rng.normal(0, 1.2, n), np.repeat(np.arange(n // 2), 2).astype(str)

    y, s, w = data(60)
    lo, hi = bootstrap_ci(roc_auc, y, s, w, n_boot=300)
    assert lo <= roc_auc(y, s) <= hi
    y2, s2, w2 = data(600)
    lo2, hi2 = bootstrap_ci(roc_auc, y2, s2, w2, n_boot=300)
    assert hi2 - lo2 < hi - lo


def test_bootstrap_keeps_a_womans_images_together():
    """With both breasts of each woman identical, resampling by woman must
    never split a pair, so every resample has an even count per score."""
    seen = []

    def metric(y, s):
        seen.append(len(s))
        return float(np.mean(s))

    y = np.array([0, 0, 1, 1, 0, 0])
    s = np.array([1.0, 1.0, 2.0, 2.0, 3.0, 3.0])
    bootstrap_ci(metric, y, s, ["a", "a", "b", "b", "c", "c"], n_boot=50)
    assert all(n % 2 == 0 for n in seen)


def test_summarize_reports_density_and_cis():
    rng = np.random.default_rng(1)
    n = 80
    ab = rng.integers(0, 2, n)
    ml = ab * rng.integers(0, 2, n)
    out = summarize(ab, ml, ab + rng.normal(0, 1, n), ml + rng.normal(0, 1, n),
                    np.repeat(np.arange(n // 2), 2).astype(str), list("FGD" * 27)[:n], n_boot=100)
    assert set(out["per_density"]) == {"F", "G", "D"}
    lo, hi = out["auc_abnormal"]["ci95"]
    assert lo <= out["auc_abnormal"]["value"] <= hi


def test_pointing_game():
    heat = np.zeros((10, 10))
    heat[2, 7] = 1
    assert pointing_hit(heat, [(7.0, 2.0, 1.0)])
    assert not pointing_hit(heat, [(2.0, 7.0, 1.5)])
