"""Heatmaps: from the runtime's own outputs on the box, Grad-CAM in development.

ONNX Runtime and TFLite have no autograd. The network's lesion map is a 1x1
convolution over the final feature map, i.e. a class activation map, and it
is an OUTPUT of the exported model, so the box draws the heatmap from what the
runtime returned (:func:`cam_from_outputs`), with no gradient.

:func:`grad_cam` is the development-time reference, implemented with hooks
(Captum / pytorch-grad-cam are not dependencies). For this architecture the
two agree by construction -- the score is the map's max, so the gradient
w.r.t. the final features is ``head.weight`` at one cell and Grad-CAM's
channel weights are ``head.weight / (h*w)`` -- and :func:`agreement` lets a
test check that the exported, quantized map still agrees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is needed only for Grad-CAM, never on the box's hot path
    import torch

    from models.network import ScreeningNet

__all__ = ["cam_from_outputs", "grad_cam", "agreement", "upsample"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function without overflow: ``1 / (1 + exp(-x))`` warns (and our tests fail) once a float32 logit
    passes -88, which an adapted model's lesion map reaches on a clear breast; the tanh form is equal and bounded."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))


def upsample(cell_map: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (h, w) -> (size, size), numpy/Pillow only."""
    im = Image.fromarray(np.ascontiguousarray(cell_map, dtype=np.float32), mode="F")
    return np.asarray(im.resize((size, size), resample=Image.Resampling.BILINEAR), dtype=np.float32)


def cam_from_outputs(lesion_map: np.ndarray, mask: np.ndarray | None = None, channel: int = 0) -> np.ndarray:
    """Heatmap in model space (S x S, 0..1) from the runtime's lesion-map logits.

    ``lesion_map`` is (2, h, w) logits as the runtime returned them (already
    dequantized); values are probabilities of a finding at each place, so a
    normal breast stays dark instead of being stretched to full scale.
    """
    size = mask.shape[0] if mask is not None else lesion_map.shape[-1] * 8
    heat = sigmoid(upsample(lesion_map[channel], size))
    if mask is not None:
        heat = np.where(mask, heat, 0.0)
    return heat.astype(np.float32)


def grad_cam(model: ScreeningNet, x: torch.Tensor, channel: int = 0, relu: bool = True) -> np.ndarray:
    """Grad-CAM (h, w) on the final feature map for one image ``x`` (1,1,S,S)."""
    model.eval()
    store: dict = {}

    def fwd_hook(_m, _inp, out):
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    handle = model.fuse.register_forward_hook(fwd_hook)
    try:
        x = x.clone().requires_grad_(False)
        score, _ = model(x)
        model.zero_grad()
        score[0, channel].backward()
    finally:
        handle.remove()
    act, grad = store["act"][0].detach(), store["grad"][0]
    weights = grad.mean(dim=(1, 2))
    cam = (weights[:, None, None] * act).sum(0)
    if relu:
        cam = cam.clamp(min=0)
    return cam.numpy()


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Pearson correlation, and whether ``a``'s peak is also ``b``'s peak.

    ``same_peak`` tolerates near-ties: it holds when ``b`` at ``a``'s peak is
    within 2% of ``b``'s range from ``b``'s maximum (``peak_gap``).
    """
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    rng = b.max() - b.min()
    gap = float((b.max() - b[np.argmax(a)]) / rng) if rng > 0 else 0.0
    return {"pearson": corr, "same_peak": gap <= 0.02, "peak_gap": gap}
