"""The trainable part of the shipped model: what it holds, how it flattens, and that it computes what the box computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.network import ScreeningNet
from models.trainable import (
    TrainablePart,
    apply_delta,
    flatten,
    frozen_features,
    pair_views,
    spec_of,
    study_scores,
    unflatten,
)
from models.triage_rule import ViewScore, first_by_view, other_breast, study_score

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model(release_dir) -> ScreeningNet:
    return ScreeningNet.from_state_dict(torch.load(release_dir / "model_fp32.pt", map_location="cpu"))


def test_the_trainable_part_is_the_fuse_convolutions_and_the_head_and_fits_a_2mb_ckks_update(model):
    spec = spec_of(model)
    assert spec.names == ("fuse.1.body.0.0.weight", "fuse.1.body.1.0.weight", "fuse.1.body.2.0.weight", "head.weight", "head.bias")
    assert spec.size == 20258
    assert spec.size * 4 * 14.4 < 2 * 1024 * 1024  # CKKS is about 14.4x the fp32 bytes (STACK-NOTES)
    assert TrainablePart.from_model(model).spec() == spec


def test_flatten_unflatten_and_apply_delta_round_trip(model):
    spec = spec_of(model)
    state = model.state_dict()
    v = flatten(state, spec)
    assert v.dtype == np.float32 and v.shape == (spec.size,)
    back = unflatten(v, spec)
    assert all(torch.equal(back[n], state[n]) for n in spec.names)
    delta = np.random.default_rng(0).normal(size=spec.size).astype(np.float32)
    moved = apply_delta(state, spec, delta)
    np.testing.assert_allclose(flatten(moved, spec) - v, delta, atol=1e-6)
    assert torch.equal(model.state_dict()["head.bias"], state["head.bias"])  # the original is untouched
    assert torch.equal(moved["stem.0.weight"], state["stem.0.weight"])
    with pytest.raises(ValueError):
        unflatten(delta[:-1], spec)


def test_frozen_features_through_the_part_give_the_network_s_own_scores(model):
    x = np.random.default_rng(1).random((3, 128, 128)).astype(np.float32)
    with torch.no_grad():
        score, lesion_map = model(torch.from_numpy(x[:, None]))
        part = TrainablePart.from_model(model).eval()
        feats = frozen_features(model, x)
        np.testing.assert_allclose(part(feats).numpy(), lesion_map.numpy(), atol=1e-5)
        np.testing.assert_allclose(part.image_logits(feats).numpy(), score.numpy(), atol=1e-5)
    assert feats.shape == (3, 48, 16, 16)


def test_norm_layers_stay_frozen_in_training_mode(model):
    part = TrainablePart.from_model(model).train()
    bns = [m for m in part.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(part, strict=False) == []


def test_the_part_loads_back_into_a_whole_network(model):
    part = TrainablePart.from_model(model)
    with torch.no_grad():
        part.head.bias.add_(1.0)
    other = ScreeningNet.from_state_dict(model.state_dict())
    part.load_into(other)
    assert torch.allclose(other.head.bias, model.head.bias + 1.0)


def test_pair_views_follows_the_box_rule_first_image_of_the_same_view_of_the_other_breast():
    views = [("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    assert pair_views(views) == [1, 0, 4, 0, 2]
    assert pair_views([("L", "CC")]) == [-1]


@pytest.mark.parametrize("views", [
    [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")],
    [("L", "MLO"), ("R", "MLO")],
    [("R", "CC"), ("R", "MLO")],  # one breast only: the release's stand-in for the other
])
def test_study_scores_equal_the_triage_rule_study_score(model, views):
    beta, fallback = 0.5, 0.38
    x = np.random.default_rng(2).random((len(views), 128, 128)).astype(np.float32)
    part = TrainablePart.from_model(model).eval()
    feats = frozen_features(model, x)
    with torch.no_grad():
        probs = torch.sigmoid(part.image_logits(feats)[:, 0]).numpy()
        got = study_scores(part, feats[None], torch.ones(1, len(views), dtype=torch.bool), torch.tensor([pair_views(views)]),
                           beta, fallback)
    p_first = first_by_view((lat, v, float(p)) for (lat, v), p in zip(views, probs, strict=True))
    expected = study_score([
        ViewScore(str(i), lat, v, float(p), 0.0, float(p - beta * (fallback if (po := other_breast(p_first, lat, v)) is None else po)), 0, 0, "")
        for i, ((lat, v), p) in enumerate(zip(views, probs, strict=True))])
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_padded_view_slots_do_not_count(model):
    x = np.random.default_rng(3).random((2, 128, 128)).astype(np.float32)
    part = TrainablePart.from_model(model).eval()
    feats = frozen_features(model, x)
    pad = torch.cat([feats[None], torch.full((1, 2, 48, 16, 16), 50.0)], dim=1)  # two junk slots that would score high
    mask = torch.tensor([[True, True, False, False]])
    other = torch.tensor([pair_views([("L", "MLO"), ("R", "MLO")]) + [-1, -1]])
    with torch.no_grad():
        a = study_scores(part, pad, mask, other, 0.5, 0.38)
        b = study_scores(part, feats[None], mask[:, :2], other[:, :2], 0.5, 0.38)
    assert a.item() == pytest.approx(b.item())


def test_a_two_channel_or_other_network_is_refused():
    with pytest.raises(ValueError, match="one-channel"):
        spec_of(ScreeningNet(in_ch=2))
