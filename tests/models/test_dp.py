"""One DP-SGD round over frozen features: the woman is the privacy unit, the round is deterministic and resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.dp import (
    DPConfig,
    StudySet,
    epsilon_of,
    noise_for_epsilon,
    per_study_gradients,
    run_round,
    state_from_bytes,
    state_to_bytes,
    train_plain,
)
from models.network import ScreeningNet
from models.trainable import TrainablePart, frozen_features

torch.set_num_threads(1)
FOUR = [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]


@pytest.fixture(scope="module")
def model(release_dir) -> ScreeningNet:
    return ScreeningNet.from_state_dict(torch.load(release_dir / "model_fp32.pt", map_location="cpu"))


@pytest.fixture(scope="module")
def data(model) -> StudySet:
    """12 studies: four views each, two with two views (padded), half of them positive."""
    rng = np.random.default_rng(0)
    feats = frozen_features(model, rng.random((44, 128, 128)).astype(np.float32)).numpy()
    studies, at = [], 0
    for i in range(12):
        views = FOUR if i < 10 else FOUR[1::2]
        studies.append((feats[at:at + len(views)], views, i % 2))
        at += len(views)
    return StudySet.from_studies(studies)


CFG = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.4, steps=12, seed=7, checkpoint_every=4)


def test_one_per_example_gradient_per_study_equal_to_that_woman_s_own_gradient(model, data):
    part = TrainablePart.from_model(model)
    idx = np.array([0, 3, 10])
    grads = per_study_gradients(part, data, idx, CFG)
    assert all(g.shape[0] == 3 for g in grads.values())  # one row per study, not per view (4 + 4 + 2 views)
    from models.dp import _loss

    for row, i in enumerate(idx):
        part.zero_grad(set_to_none=True)
        _loss(part, data, np.array([i]), CFG).backward()
        for name, p in part.named_parameters():
            if name in grads:
                torch.testing.assert_close(grads[name][row], p.grad, rtol=1e-4, atol=1e-6)


def test_a_round_is_deterministic_under_its_seed_and_changes_only_the_trainable_part(model, data):
    a = run_round(TrainablePart.from_model(model), data, CFG)
    b = run_round(TrainablePart.from_model(model), data, CFG)
    c = run_round(TrainablePart.from_model(model), data, DPConfig(**{**CFG.__dict__, "seed": 8}))
    assert a.status == "done" and a.state.step == CFG.steps
    np.testing.assert_array_equal(a.delta, b.delta)
    assert np.abs(a.delta).max() > 0 and not np.array_equal(a.delta, c.delta)
    assert a.state.history == [(1.0, 0.4, 12)]
    assert a.epsilon == pytest.approx(epsilon_of([(1.0, 0.4, 12)], CFG.delta))


def test_a_stopped_round_resumes_from_its_checkpoint_to_the_same_weights(model, data):
    whole = run_round(TrainablePart.from_model(model), data, CFG)
    saved: list[bytes] = []
    asks = iter([False] * 6 + [True])
    paused = run_round(TrainablePart.from_model(model), data, CFG, should_stop=lambda: next(asks),
                       on_checkpoint=lambda s: saved.append(state_to_bytes(s)))
    assert paused.status == "paused" and paused.state.step == 6
    assert len(saved) == 2  # every 4 steps, and at the stop
    state = state_from_bytes(saved[-1])
    assert state.step == 6 and state.history == [(1.0, 0.4, 6)]
    resumed = run_round(TrainablePart.from_model(model), data, CFG, state=state)
    np.testing.assert_array_equal(resumed.delta, whole.delta)
    assert resumed.state.history == whole.state.history


def test_clipping_bounds_what_one_woman_can_move_without_noise(model, data):
    cfg = DPConfig(noise_multiplier=0.0, max_grad_norm=1e-3, sample_rate=1.0, steps=3, lr=1.0, momentum=0.0)
    r = run_round(TrainablePart.from_model(model), data, cfg)
    # each step moves by lr * (sum of clipped per-study gradients) / expected batch size <= lr * C
    assert np.linalg.norm(r.delta) <= 3 * 1e-3 + 1e-6
    assert r.epsilon == float("inf")  # no noise: no guarantee


def test_an_empty_poisson_batch_still_adds_noise(model, data):
    cfg = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1e-6, steps=2)
    r = run_round(TrainablePart.from_model(model), data, cfg)
    assert r.state.losses == []  # nobody was sampled
    assert np.abs(r.delta).max() > 0


def test_the_plain_peer_trains_the_same_data_without_clipping_or_noise(model, data):
    d = train_plain(TrainablePart.from_model(model), data, CFG)
    assert d.shape == (20258,) and np.abs(d).max() > 0


def test_planned_noise_keeps_the_composed_epsilon_within_the_target():
    prior = [(5.0, 0.1, 50)]
    sigma = noise_for_epsilon(0.6, 0.1, 50, 1e-5, prior)
    assert epsilon_of([*prior, (sigma, 0.1, 50)], 1e-5) <= 0.6
    assert epsilon_of([*prior, (sigma * 0.95, 0.1, 50)], 1e-5) > 0.6
    assert epsilon_of([], 1e-5) == 0.0
    with pytest.raises(ValueError):
        noise_for_epsilon(epsilon_of(prior, 1e-5) / 2, 0.1, 50, 1e-5, prior)


def test_a_damaged_checkpoint_is_refused():
    with pytest.raises(ValueError, match="unreadable"):
        state_from_bytes(b"not a checkpoint")
