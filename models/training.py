"""Training recipe: lesion-supervised maps, augmentation after the split.

Pure pieces (target drawing, augmentation, loss) are functions of tensors; the
loop in :func:`train` owns files (checkpoints) and the progress bar. A run is
reproducible from ``TrainConfig.seed``: every epoch reseeds its own RNGs from
``(seed, epoch)``, so a run resumed from a checkpoint takes exactly the same
steps as one that never stopped.

Why the loss looks like this: mini-MIAS gives a centre and radius for most
findings. The 2-channel lesion map is trained per cell against those circles
(channel 0 any finding, channel 1 malignant) with a positive weight because
lesions are a few cells out of hundreds; the max-pooled image score also gets
an image-level loss so findings without coordinates (spread calcifications)
still teach something.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.data import Record, load_pixels
from models.network import MAP_STRIDE, new_model
from models.preprocess import INPUT_SIZE, preprocess, to_model_coords

__all__ = ["TrainConfig", "Arrays", "build_arrays", "train", "predict", "draw_targets"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (stored with each checkpoint)."""

    epochs: int = 120
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    crop: int = 96
    lesion_crop_prob: float = 0.8
    pos_weight: float = 4.0
    image_loss_weight: float = 1.0
    seed: int = 0
    threads: int = 1
    pair: bool = False  # second input channel: the same woman's other breast
    synthetic_pretrain: int = 0  # synthetic mammograms to pretrain on first (0 = none)
    pretrain_epochs: int = 20
    arch: str = "mobile"  # "mobile" (ScreeningNet, from scratch) or "lite0" (ImageNet EfficientNet-Lite0)
    input_size: int = INPUT_SIZE  # side of the preprocessed image (build_arrays must use the same)
    freeze_blocks: int = 0  # lite0: stem + this many leading blocks kept at ImageNet weights (0 = none)


@dataclass
class Arrays:
    """Preprocessed images and their targets, all in model space."""

    images: np.ndarray  # (N, S, S) float32
    masks: np.ndarray  # (N, S, S) bool, breast
    targets: np.ndarray  # (N, 2, S, S) uint8, lesion circles (any, malignant)
    labels: np.ndarray  # (N, 2) float32, image-level (abnormal, malignant)
    ignore_map: np.ndarray  # (N, 2) bool: finding without coordinates
    circles: list[list[tuple[float, float, float]]]  # model-space (x, y, r) per image
    pair_index: np.ndarray | None = None  # (N,) index of the woman's other breast (self if none)

    def inputs(self, idx: np.ndarray, pair: bool) -> np.ndarray:
        """(n, C, S, S) network inputs: the image, plus the other breast if ``pair``."""
        x = self.images[idx][:, None]
        if pair:
            other = self.pair_index[idx] if self.pair_index is not None else idx
            x = np.concatenate([x, self.images[other][:, None]], axis=1)
        return np.ascontiguousarray(x)


def pair_indices(women: list[str]) -> np.ndarray:
    """For each image, the index of the other image of the same woman (itself if none)."""
    by: dict[str, list[int]] = {}
    for i, w in enumerate(women):
        by.setdefault(w, []).append(i)
    out = np.arange(len(women))
    for members in by.values():
        if len(members) == 2:
            out[members[0]], out[members[1]] = members[1], members[0]
    return out


def draw_targets(size: int, circles: list[tuple[float, float, float, bool]]) -> np.ndarray:
    """(2, size, size) uint8 discs: channel 0 every finding, channel 1 malignant ones."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    out = np.zeros((2, size, size), np.uint8)
    for x, y, r, malignant in circles:
        disc = (xx - x) ** 2 + (yy - y) ** 2 <= max(r, 2.0) ** 2
        out[0] |= disc
        if malignant:
            out[1] |= disc
    return out


def build_arrays(records: list[Record], size: int = INPUT_SIZE) -> Arrays:
    """Preprocess every record once (the slow part) and draw its targets."""
    n = len(records)
    images = np.zeros((n, size, size), np.float32)
    masks = np.zeros((n, size, size), bool)
    targets = np.zeros((n, 2, size, size), np.uint8)
    labels = np.zeros((n, 2), np.float32)
    ignore = np.zeros((n, 2), bool)
    circles = []
    for i, r in enumerate(records):
        p = preprocess(load_pixels(r), size)
        images[i], masks[i] = p.image, p.mask
        cs = [(*to_model_coords(p.geometry, les.x, les.y, les.radius), les.malignant) for les in r.lesions]
        targets[i] = draw_targets(size, cs)
        circles.append([c[:3] for c in cs])
        labels[i] = (r.abnormal, r.malignant)
        ignore[i, 0] = bool(r.abnormal) and not cs
        ignore[i, 1] = bool(r.malignant) and not any(c[3] for c in cs)
    return Arrays(images, masks, targets, labels, ignore, circles, pair_indices([r.woman for r in records]))


def _augment(img, mask, tgt, gen: torch.Generator, crop: int, lesion_p: float):
    """Geometric + intensity augmentation on a batch; returns cropped tensors.

    Horizontal flips are NOT used: every image is already on the canonical
    side, and the model should rely on that.
    """
    b, s = img.shape[0], img.shape[-1]
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    ang = (u(b) - 0.5) * math.radians(20)
    scale = 0.85 + 0.3 * u(b)
    vflip = torch.where(u(b) < 0.5, -1.0, 1.0)
    tx, ty = (u(b) - 0.5) * 0.1, (u(b) - 0.5) * 0.1
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin * vflip, tx], 1), torch.stack([sin, cos * vflip, ty], 1)], 1
    )
    grid = F.affine_grid(theta, (b, 1, s, s), align_corners=False)
    img = F.grid_sample(img, grid, mode="bilinear", align_corners=False)
    rest = F.grid_sample(torch.cat([mask, tgt], 1), grid, mode="nearest", align_corners=False)
    c = img.shape[1]
    mask, tgt = rest[:, :c], rest[:, c:]
    # intensity: gamma, contrast, noise -- inside the breast only
    gamma = torch.exp(torch.randn(b, 1, 1, 1, generator=gen) * 0.25)
    contrast = 0.85 + 0.3 * u(b, 1, 1, 1)
    img = (img.clamp(0, 1) ** gamma) * contrast
    img = img + torch.randn(img.shape, generator=gen) * 0.02
    img = (img.clamp(0, 1)) * mask
    # crop, aligned to the map stride; prefer crops that contain a lesion
    cells = (s - crop) // MAP_STRIDE
    ys, xs = [], []
    for i in range(b):
        cy = cx = None
        if tgt[i, 0].any() and float(u(1)) < lesion_p:
            pos = torch.nonzero(tgt[i, 0] > 0)
            c = pos[int(torch.randint(len(pos), (1,), generator=gen))]
            lo_y = max(0, (int(c[0]) - crop + MAP_STRIDE) // MAP_STRIDE)
            hi_y = min(cells, int(c[0]) // MAP_STRIDE)
            lo_x = max(0, (int(c[1]) - crop + MAP_STRIDE) // MAP_STRIDE)
            hi_x = min(cells, int(c[1]) // MAP_STRIDE)
            if lo_y <= hi_y and lo_x <= hi_x:
                cy = int(torch.randint(lo_y, hi_y + 1, (1,), generator=gen))
                cx = int(torch.randint(lo_x, hi_x + 1, (1,), generator=gen))
        if cy is None:
            cy = int(torch.randint(0, cells + 1, (1,), generator=gen))
            cx = int(torch.randint(0, cells + 1, (1,), generator=gen))
        ys.append(cy * MAP_STRIDE)
        xs.append(cx * MAP_STRIDE)
    sl = lambda t, i: t[i, :, ys[i] : ys[i] + crop, xs[i] : xs[i] + crop]  # noqa: E731
    img = torch.stack([sl(img, i) for i in range(b)])
    tgt = torch.stack([sl(tgt, i) for i in range(b)])
    return img, tgt


def loss_fn(score, lesion_map, tgt_full, labels, ignore, cfg: TrainConfig):
    """Per-cell BCE against the circles + image-level BCE on the pooled score."""
    tgt = F.max_pool2d(tgt_full, MAP_STRIDE)  # a cell is positive if it touches a lesion
    valid = (~ignore).float()[:, :, None, None].expand_as(tgt)
    pw = torch.tensor(cfg.pos_weight)
    cell = F.binary_cross_entropy_with_logits(lesion_map, tgt, pos_weight=pw, reduction="none")
    cell = (cell * valid).sum() / valid.sum().clamp(min=1.0)
    # what the crop actually contains: lesions seen -> 1; findings without
    # coordinates keep their image label
    crop_label = torch.where(ignore, labels, tgt.amax(dim=(2, 3)))
    img = F.binary_cross_entropy_with_logits(score, crop_label)
    return cell + cfg.image_loss_weight * img


def synthetic_arrays(n: int, size: int = INPUT_SIZE, seed: int = 0) -> Arrays:
    """``n`` SYNTHETIC mammograms (models.synthetic) as training arrays."""
    from models.synthetic import DENSITIES, generate

    rng = np.random.default_rng(seed)
    imgs, masks, tgts, labels, circles = [], [], [], [], []
    for _i in range(n):
        finding = [None, None, "mass", "spiculated", "calcification"][int(rng.integers(5))]
        s = generate(int(rng.integers(1 << 30)), DENSITIES[int(rng.integers(4))], finding, size=256)
        p = preprocess(s.image, size)
        cs = [(*to_model_coords(p.geometry, *s.lesion), s.malignant)] if s.lesion else []
        imgs.append(p.image)
        masks.append(p.mask)
        tgts.append(draw_targets(size, cs))
        labels.append((s.abnormal, s.malignant))
        circles.append([c[:3] for c in cs])
    return Arrays(np.stack(imgs), np.stack(masks), np.stack(tgts), np.asarray(labels, np.float32),
                  np.zeros((n, 2), bool), circles, np.arange(n))


def pretrain_state(cfg: TrainConfig, progress: bool = False) -> dict | None:
    """Weights after pretraining on synthetic mammograms, or None if disabled.

    Synthetic masses and calcifications teach "a compact bright finding inside
    the breast is what the map should light up" before the 129 real women are
    seen. The figures of a model pretrained this way still come only from the
    real held-out women.
    """
    if cfg.synthetic_pretrain <= 0:
        return None
    arrays = synthetic_arrays(cfg.synthetic_pretrain, size=cfg.input_size, seed=cfg.seed)
    pre = TrainConfig(**{**asdict(cfg), "epochs": cfg.pretrain_epochs, "synthetic_pretrain": 0, "pair": False})
    model = train(arrays, np.arange(len(arrays.images)), pre, progress=progress)
    return model.state_dict()


def _save(path: Path, model, opt, sched, epoch: int, cfg: TrainConfig) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
         "epoch": epoch, "config": asdict(cfg)},
        tmp,
    )
    tmp.replace(path)


def train(arrays: Arrays, index: np.ndarray, cfg: TrainConfig, checkpoint: Path | None = None,
          progress: bool = True, init_state: dict | None = None,
          stop_after_epoch: int | None = None, log=None) -> torch.nn.Module:
    """Train on ``arrays[index]``; resume from ``checkpoint`` if it exists.

    ``stop_after_epoch`` ends this call early (as a crash would) after that
    epoch's checkpoint is written; calling again resumes. ``log(epoch,
    mean_loss)`` is called after each epoch (a progress file for runs in the
    background, where a progress bar is unreadable).
    """
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = new_model(cfg.arch, in_ch=2 if cfg.pair else 1)
    if init_state is not None:
        model.load_state_dict(init_state)
    if cfg.freeze_blocks:
        model.freeze(cfg.freeze_blocks)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(index) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
    )
    start = 0
    if checkpoint is not None and checkpoint.exists():
        st = torch.load(checkpoint, weights_only=False)
        if st["config"] != asdict(cfg):
            from models.errors import ModelError

            raise ModelError(
                f"checkpoint {checkpoint} was made with a different config; "
                "delete it or pass the same options to resume"
            )
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        start = st["epoch"] + 1
    imgs = torch.from_numpy(arrays.inputs(index, cfg.pair))
    masks = torch.from_numpy(arrays.masks[index])[:, None].float()
    if cfg.pair:
        other = arrays.pair_index[index] if arrays.pair_index is not None else index
        masks = torch.cat([masks, torch.from_numpy(arrays.masks[other])[:, None].float()], 1)
    tgts = torch.from_numpy(arrays.targets[index]).float()
    labels = torch.from_numpy(arrays.labels[index])
    ignore = torch.from_numpy(arrays.ignore_map[index])
    bar = tqdm(range(start, cfg.epochs), desc="train", disable=not progress, initial=start,
               total=cfg.epochs, unit="epoch")
    for epoch in bar:
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        order = torch.randperm(len(index), generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            sel = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if len(sel) < 2:  # BatchNorm needs more than one sample
                continue
            x, t = _augment(imgs[sel], masks[sel], tgts[sel], gen, cfg.crop, cfg.lesion_crop_prob)
            score, lmap = model(x)
            loss = loss_fn(score, lmap, t, labels[sel], ignore[sel], cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach().item()
        bar.set_postfix(loss=f"{total / steps_per_epoch:.3f}")
        if log is not None:
            log(epoch, total / steps_per_epoch)
        if checkpoint is not None:
            _save(checkpoint, model, opt, sched, epoch, cfg)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    model.eval()
    return model


@torch.no_grad()
def predict(model: torch.nn.Module, inputs: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, 2) and lesion-map logits (N, 2, s, s) on whole images.

    ``inputs`` is (N, C, S, S) (see :meth:`Arrays.inputs`) or (N, S, S).
    """
    model.eval()
    if inputs.ndim == 3:
        inputs = inputs[:, None]
    scores, maps = [], []
    for i in range(0, len(inputs), batch):
        x = torch.from_numpy(np.ascontiguousarray(inputs[i : i + batch]))
        s, m = model(x)
        scores.append(torch.sigmoid(s).numpy())
        maps.append(m.numpy())
    return np.concatenate(scores), np.concatenate(maps)


def save_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
