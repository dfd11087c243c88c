"""The part of the screening network that a box trains and federated sync carries.

Why this part (release 0.1.0, :class:`models.network.ScreeningNet`):

* **Small enough to travel.** The ``fuse`` block's three convolutions and the
  ``head`` hold 20,258 values (81 KB as float32). A CKKS-encrypted update is
  about 14 times the plaintext, about 1.2 MB, under the 2 MB a round may send
  over a village clinic's link (``../shared/STACK-NOTES.md``, TenSEAL).
* **Cheap to train privately on 2 cores.** Everything before ``fuse`` stays
  frozen, so its output (``lateral(c3) + up(top(c4))``, 48 x 16 x 16 per
  view at 128 px) is computed once per view (:func:`frozen_features`) and
  DP-SGD runs only over the last block and the head (:mod:`models.dp`).
* **Opacus-compatible without changing the network.** The BatchNorm layers
  inside ``fuse`` stay frozen (eval mode, running statistics, no gradient):
  per-example gradients are then exact, and Opacus validates only the
  modules that have trainable parameters.

The box's unit is a study, not an image: :func:`study_scores` computes the
box's own study score (``models.triage_rule``: each view's suspicion against
the same view of the other breast, a study as its most suspicious view)
differentiably, so a woman's loss and her per-example gradient cover all of
her views at once (the privacy unit of :mod:`models.dp`).

This module knows nothing of sync: :class:`PartSpec` carries the ordered
names and shapes; ``edge_agent.learning`` turns it into sync's envelope.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "TRAINABLE_MODULES",
    "PartSpec",
    "TrainablePart",
    "apply_delta",
    "flatten",
    "frozen_features",
    "pair_views",
    "spec_of",
    "study_scores",
    "trainable_names",
    "unflatten",
]

#: Top-level modules of ScreeningNet that hold the trainable part.
TRAINABLE_MODULES = ("fuse", "head")


@dataclass(frozen=True)
class PartSpec:
    """Trainable parameter names and shapes, in the fixed order of the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def size(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes))


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))


def trainable_names(model: nn.Module) -> tuple[str, ...]:
    """Names (state_dict keys) of the trainable parameters: convolution and head weights under ``fuse``/``head``, no norm layer."""
    _check_supported(model)
    norm_params = {f"{m}.{p}" for m, mod in model.named_modules() if _is_norm(mod) for p, _ in mod.named_parameters(recurse=False)}
    return tuple(n for n, _ in model.named_parameters() if n.split(".", 1)[0] in TRAINABLE_MODULES and n not in norm_params)


def spec_of(model: nn.Module) -> PartSpec:
    """The :class:`PartSpec` of ``model``'s trainable part (names in parameter order)."""
    params = dict(model.named_parameters())
    names = trainable_names(model)
    return PartSpec(names, tuple(tuple(int(x) for x in params[n].shape) for n in names))


def _check_supported(model: nn.Module) -> None:
    from models.network import ScreeningNet

    if not isinstance(model, ScreeningNet):
        raise ValueError(f"local training supports ScreeningNet releases only, not {type(model).__name__}")
    if model.in_ch != 1:
        raise ValueError("local training supports one-channel models only (the shipped 0.1.0); this release reads both breasts")


def flatten(state: Mapping[str, torch.Tensor], spec: PartSpec) -> np.ndarray:
    """The trainable part of a state_dict (or a TrainablePart's) as one flat float32 vector, in ``spec`` order."""
    parts = []
    for name, shape in zip(spec.names, spec.shapes, strict=True):
        t = state[name]
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, the spec says {shape}")
        parts.append(t.detach().cpu().reshape(-1).to(torch.float32).numpy())
    return np.concatenate(parts).astype(np.float32, copy=False)


def unflatten(vector: np.ndarray, spec: PartSpec) -> dict[str, torch.Tensor]:
    """The inverse of :func:`flatten`: name -> tensor."""
    vector = np.asarray(vector, dtype=np.float32)
    if vector.ndim != 1 or vector.size != spec.size:
        raise ValueError(f"expected a flat vector of {spec.size} values, got shape {vector.shape}")
    out, at = {}, 0
    for name, shape in zip(spec.names, spec.shapes, strict=True):
        n = int(np.prod(shape))
        out[name] = torch.from_numpy(vector[at:at + n].copy()).reshape(shape)
        at += n
    return out


def apply_delta(state: Mapping[str, torch.Tensor], spec: PartSpec, delta: np.ndarray) -> dict[str, torch.Tensor]:
    """A new state_dict: ``state`` with ``delta`` (flat, ``spec`` order) added to the trainable part; ``state`` is not changed."""
    add = unflatten(delta, spec)
    out = {k: v.clone() for k, v in state.items()}
    for name, d in add.items():
        out[name] = (out[name].to(torch.float32) + d).to(out[name].dtype)
    return out


@torch.no_grad()
def frozen_features(model: nn.Module, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The input of ``fuse`` for preprocessed images (N, S, S) in [0, 1]: (N, feat, S/8, S/8), float32.

    Computed once per view; nothing before ``fuse`` changes during local training.
    """
    _check_supported(model)
    x = torch.as_tensor(np.asarray(images, dtype=np.float32) if not isinstance(images, torch.Tensor) else images, dtype=torch.float32)
    if x.ndim == 3:
        x = x[:, None]
    was = model.training
    model.eval()
    try:
        h = model.stage1(model.stem(x))
        c3 = model.stage3(model.stage2(h))
        c4 = model.stage4(c3)
        return (model.lateral(c3) + model.up(model.top(c4))).contiguous()
    finally:
        model.train(was)


class TrainablePart(nn.Module):
    """``fuse`` + ``head`` of a ScreeningNet, reading frozen features; Opacus-compatible.

    Parameter names are the network's own (``fuse.1.body.0.0.weight``,
    ``head.bias``, ...), so its state_dict keys match :func:`spec_of`.
    Norm layers are frozen and stay in eval mode even under ``train()``.
    """

    def __init__(self, fuse: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.fuse = fuse
        self.head = head
        for mod in self.modules():
            if _is_norm(mod):
                for p in mod.parameters(recurse=False):
                    p.requires_grad_(False)
        self.train()

    @classmethod
    def from_model(cls, model: nn.Module) -> TrainablePart:
        """A copy of ``model``'s trainable block and head (the model itself is not changed)."""
        _check_supported(model)
        return cls(copy.deepcopy(model.fuse), copy.deepcopy(model.head))

    def train(self, mode: bool = True) -> TrainablePart:
        super().train(mode)
        for mod in self.modules():
            if _is_norm(mod):
                mod.eval()  # frozen running statistics: a per-example gradient must not depend on the rest of the batch
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Lesion map logits (N, 2, h, w) from frozen features (N, feat, h, w)."""
        return self.head(self.fuse(features))

    def image_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 2) image logits [abnormal, malignant]: the map's maximum, as ScreeningNet.forward."""
        return torch.amax(self(features), dim=(2, 3))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable parameters by name (detached copies)."""
        names = set(self.spec().names)
        return {n: p.detach().clone() for n, p in self.named_parameters() if n in names}

    def spec(self) -> PartSpec:
        norm_params = {f"{m}.{p}" for m, mod in self.named_modules() if _is_norm(mod) for p, _ in mod.named_parameters(recurse=False)}
        named = [(n, p) for n, p in self.named_parameters() if n not in norm_params]
        return PartSpec(tuple(n for n, _ in named), tuple(tuple(int(x) for x in p.shape) for _, p in named))

    def load_into(self, model: nn.Module) -> nn.Module:
        """Copy this part's weights into ``model`` (in place) and return it."""
        state = model.state_dict()
        for name, value in self.state_dict().items():
            state[name] = value.detach().clone()
        model.load_state_dict(state)
        return model


def pair_views(views: Sequence[tuple[str, str]]) -> list[int]:
    """For each view (laterality, view) in arrival order, the index of the view its suspicion is measured against, or -1.

    The box's rule (``models.triage_rule.first_by_view`` / ``other_breast``):
    the FIRST image of the same view of the other breast.
    """
    first: dict[tuple[str, str], int] = {}
    for i, (lat, view) in enumerate(views):
        first.setdefault((lat, view), i)
    other_of = {"L": "R", "R": "L"}
    return [first.get((other_of.get(lat, ""), view), -1) for lat, view in views]


def study_scores(part: TrainablePart, features: torch.Tensor, mask: torch.Tensor, other: torch.Tensor,
                 beta: float, fallback_p_other: float | None) -> torch.Tensor:
    """The box's study score, differentiable: (B,) from a padded batch of studies.

    ``features`` (B, V, feat, h, w), ``mask`` (B, V) True where a view is
    present, ``other`` (B, V) the index from :func:`pair_views` (-1: none).
    A view's suspicion is ``p - beta * p_other`` (``fallback_p_other`` when
    the study lacks that view of the other breast; the view's own p when
    that is None too), a study's score its largest suspicion
    (``models.triage_rule.study_score``).

    The part is called once per view slot with the batch of studies, so each
    call's batch dimension is the study: Opacus adds the per-view
    per-example gradients of a woman into one per-woman gradient.
    """
    b, v = mask.shape
    probs = torch.stack([torch.sigmoid(part.image_logits(features[:, j])[:, 0]) for j in range(v)], dim=1)  # (B, V)
    safe = other.clamp(min=0)
    p_other = torch.gather(probs, 1, safe)
    if fallback_p_other is None:
        stand_in = probs
    else:
        stand_in = torch.full_like(probs, float(fallback_p_other))
    p_other = torch.where(other >= 0, p_other, stand_in)
    sus = probs - beta * p_other
    sus = torch.where(mask, sus, torch.full_like(sus, -1e9))
    return sus.max(dim=1).values
