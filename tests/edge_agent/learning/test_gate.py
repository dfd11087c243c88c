"""The evaluation gate's rule: serve only on a gain the held-back women show beyond chance, never on a lucky point estimate."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.learning.gate import judge


def scores(labels: np.ndarray, separation: float, seed: int) -> np.ndarray:
    """Study scores that rank abnormal studies higher by ``separation`` standard deviations."""
    return np.random.default_rng(seed).normal(size=len(labels)) + separation * labels


def test_too_few_held_back_studies_of_either_kind_is_only_a_candidate():
    y = np.array([1, 0, 0, 0, 0, 0])
    verdict = judge(y, scores(y, 0.0, 1), scores(y, 5.0, 2), margin=0.02, min_cases=2)
    assert verdict.decision == "candidate" and "too few held-back studies" in verdict.reason and verdict.active_auc is None


def test_a_clear_gain_on_enough_women_serves():
    y = np.array([0, 1] * 40)
    verdict = judge(y, scores(y, 0.3, 3), scores(y, 3.0, 4), margin=0.02, min_cases=5)
    assert verdict.decision == "serve", verdict.reason
    assert verdict.gain_ci95 is not None and verdict.gain_ci95[0] >= 0.02
    assert verdict.adapted_auc > verdict.active_auc and "95% CI" in verdict.reason
    assert verdict.metrics()["heldback_auc_gain_low"] == verdict.gain_ci95[0]


def test_a_point_estimate_that_beats_the_margin_by_chance_on_a_small_clinic_does_not_serve():
    """Eight held-back women: the adapted model's AUC is higher by far more than the margin, and the interval still holds 0."""
    y = np.array([0, 1] * 4)
    active = np.array([0.5, 0.4, 0.2, 0.6, 0.7, 0.3, 0.1, 0.8])
    adapted = np.array([0.5, 0.6, 0.2, 0.6, 0.7, 0.3, 0.1, 0.8])  # one abnormal study moved up
    verdict = judge(y, active, adapted, margin=0.02, min_cases=3)
    assert verdict.adapted_auc - verdict.active_auc > 0.02  # what the old rule served on
    assert verdict.decision == "candidate" and verdict.gain_ci95[0] < 0.02 <= verdict.gain_ci95[1]
    assert "below the margin" in verdict.reason


def test_the_interval_resamples_women_not_studies():
    """Two confirmed studies of each woman are one woman's evidence, not two: the interval widens and the decision follows it."""
    y1 = np.array([0, 1] * 12)
    active1, adapted1 = scores(y1, 0.5, 5), scores(y1, 1.9, 6)
    y, active, adapted = np.repeat(y1, 2), np.repeat(active1, 2), np.repeat(adapted1, 2)
    women = [f"w{i}" for i in range(len(y1)) for _ in range(2)]
    as_studies = judge(y, active, adapted, margin=0.22, min_cases=5)
    as_women = judge(y, active, adapted, margin=0.22, min_cases=5, women=women)
    assert (as_studies.decision, as_women.decision) == ("serve", "candidate")
    width = {k: v.gain_ci95[1] - v.gain_ci95[0] for k, v in (("studies", as_studies), ("women", as_women))}
    assert width["women"] > width["studies"] * 1.2
    assert as_women.gain_ci95 == pytest.approx(judge(y1, active1, adapted1, margin=0.22, min_cases=3).gain_ci95, abs=0.05)
