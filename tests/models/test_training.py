"""A few tiny training steps on synthetic data: the recipe runs, learns the
targets it is given, and a resumed run is identical to an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.preprocess import preprocess, to_model_coords
from models.synthetic import generate
from models.training import Arrays, TrainConfig, draw_targets, loss_fn, train

SIZE = 64


@pytest.fixture(scope="module")
def tiny_arrays() -> Arrays:
    imgs, masks, tgts, labels, ign, circles = [], [], [], [], [], []
    for i in range(6):
        s = generate(i, "B", finding=[None, "mass", "spiculated"][i % 3], size=128)
        p = preprocess(s.image, SIZE)
        cs = [(*to_model_coords(p.geometry, *s.lesion), s.malignant)] if s.lesion else []
        imgs.append(p.image)
        masks.append(p.mask)
        tgts.append(draw_targets(SIZE, cs))
        labels.append((s.abnormal, s.malignant))
        ign.append((False, False))
        circles.append([c[:3] for c in cs])
    return Arrays(np.stack(imgs), np.stack(masks), np.stack(tgts), np.asarray(labels, np.float32),
                  np.asarray(ign), circles)


CFG = TrainConfig(epochs=2, batch_size=3, crop=32, seed=5, threads=1)


def test_targets_mark_the_lesion_disc():
    t = draw_targets(32, [(10.0, 12.0, 3.0, True), (25.0, 5.0, 2.0, False)])
    assert t[0, 12, 10] == 1 and t[1, 12, 10] == 1
    assert t[0, 5, 25] == 1 and t[1, 5, 25] == 0
    assert t[0, 30, 30] == 0


def test_resumed_run_equals_uninterrupted_run(tiny_arrays, tmp_path):
    idx = np.arange(len(tiny_arrays.images))
    full = train(tiny_arrays, idx, CFG, checkpoint=tmp_path / "full.ckpt", progress=False)
    ck = tmp_path / "resumed.ckpt"
    train(tiny_arrays, idx, CFG, checkpoint=ck, progress=False, stop_after_epoch=0)  # "crash"
    assert torch.load(ck, weights_only=False)["epoch"] == 0
    resumed = train(tiny_arrays, idx, CFG, checkpoint=ck, progress=False)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=False):
        assert torch.equal(a, b), name


def test_checkpoint_from_another_config_is_refused(tiny_arrays, tmp_path):
    from models.errors import ModelError

    idx = np.arange(len(tiny_arrays.images))
    ck = tmp_path / "x.ckpt"
    train(tiny_arrays, idx, CFG, checkpoint=ck, progress=False, stop_after_epoch=0)
    other = TrainConfig(**{**CFG.__dict__, "seed": 6})
    with pytest.raises(ModelError, match="different config"):
        train(tiny_arrays, idx, other, checkpoint=ck, progress=False)


def test_loss_falls_on_a_fixed_batch(tiny_arrays):
    torch.manual_seed(0)
    from models.network import ScreeningNet

    model = ScreeningNet()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x = torch.from_numpy(tiny_arrays.images)[:, None]
    t = torch.from_numpy(tiny_arrays.targets).float()
    y = torch.from_numpy(tiny_arrays.labels)
    ign = torch.from_numpy(tiny_arrays.ignore_map)
    losses = []
    for _ in range(8):
        score, lmap = model(x)
        loss = loss_fn(score, lmap, t, y, ign, CFG)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_synthetic_pretraining_data_is_labelled_and_targeted():
    from models.training import synthetic_arrays

    a = synthetic_arrays(10, size=SIZE, seed=1)
    assert a.images.shape == (10, SIZE, SIZE)
    has_target = a.targets[:, 0].reshape(10, -1).any(axis=1)
    np.testing.assert_array_equal(has_target, a.labels[:, 0] == 1)
    # malignant channel only where the synthetic finding is malignant
    assert not a.targets[a.labels[:, 1] == 0, 1].any()


def test_lite0_recipe_starts_from_imagenet_and_learns(tiny_arrays):
    """Model 0.2's recipe trains, from the ImageNet weights rather than a random start."""
    from models.lite import LiteNet

    cfg = TrainConfig(**{**CFG.__dict__, "arch": "lite0", "input_size": SIZE, "epochs": 3, "lr": 1e-3})
    start = LiteNet.imagenet()
    idx = np.arange(len(tiny_arrays.images))
    losses: list[float] = []
    model = train(tiny_arrays, idx, cfg, progress=False, log=lambda epoch, loss: losses.append(loss))
    assert isinstance(model, LiteNet) and len(losses) == 3
    assert np.isfinite(losses).all()
    # fine-tuned from the ImageNet weights, not from a random start
    w0, w1 = start.state_dict()["blocks.5.project.conv.weight"], model.state_dict()["blocks.5.project.conv.weight"]
    assert float((w1 - w0).abs().mean()) < 0.1 * float(w0.abs().mean())
    torch.manual_seed(0)
    fresh = LiteNet().state_dict()["blocks.5.project.conv.weight"]
    assert float((fresh - w0).abs().mean()) > 0.5 * float(w0.abs().mean())
    _, lmap = model(torch.from_numpy(tiny_arrays.images[:1])[:, None])
    assert lmap.shape == (1, 2, SIZE // 8, SIZE // 8)


def test_woman_score_is_her_most_suspicious_image_and_a_model_ties_with_itself():
    from models.crossval import compare_rows, paired_difference, woman_scores

    rng = np.random.default_rng(0)
    rows = []
    for w in range(30):
        sick = int(w % 3 == 0)
        for side in range(2):
            ab = int(sick and side == 0)
            rows.append({"ref": f"m{2 * w + side}", "woman": str(w), "abnormal": ab,
                         "p_abnormal": float(np.clip(0.3 + 0.3 * ab + rng.normal(0, 0.15), 0, 1))})
    women, y, s = woman_scores([{**r, "suspicion": r["p_abnormal"]} for r in rows])
    assert len(women) == 30 and sum(y) == 10
    assert s[women.index("0")] == max(rows[0]["p_abnormal"], rows[1]["p_abnormal"])
    m = compare_rows(rows, n_boot=50)
    assert m["n_women"] == 30 and m["woman_auc"]["value"] > 0.5
    d = paired_difference(rows, rows, n_boot=50)
    assert d["woman"]["value"] == 0 and d["woman"]["ci95"] == [0.0, 0.0]
    worse = [{**r, "p_abnormal": float(rng.random())} for r in rows]
    assert paired_difference(rows, worse, n_boot=50)["image_p_abnormal"]["value"] < 0
