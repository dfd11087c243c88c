"""The one preprocessing path shared by training, evaluation and the box.

Whatever the network saw while it was trained is exactly what it sees at
inference time, because both call :func:`preprocess` and nothing else. All
functions are pure numpy (plus ``scipy.ndimage`` for connected components) so
they run the same on a workstation and on the 2-core clinic box.

Steps, and why each one is there:

1. **Breast mask** -- threshold the smoothed image, keep the largest connected
   component, fill holes. Film markers ("R OBL"), tape and scanner edges sit
   outside it; the first honest attempt on mini-MIAS showed that once
   everything outside a breast mask is zeroed, the markers stop mattering.
2. **Canonical side** -- mirror so the chest wall is on the LEFT. Decided from
   the pixels (which half holds more breast), not from a DICOM tag, because the
   tags are not always right and MIAS has none.
3. **Crop** to the mask's bounding box and pad it to a square (padding on the
   nipple side), so the breast fills the frame without distorting its shape.
4. **Window** -- map the 1st..99th percentile of breast pixels to 0..1.
   Digitised film and DICOM detectors have very different grey levels; a
   per-image window inside the breast makes them comparable.
5. **Resize** to the network's input size (area averaging when shrinking).

:class:`Geometry` records the flip, crop and scale so that a heatmap or a
lesion coordinate can travel between the original image and model space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from models.errors import InputImageError

__all__ = [
    "INPUT_SIZE",
    "Geometry",
    "Preprocessed",
    "breast_mask",
    "chest_wall_on_right",
    "preprocess",
    "to_model_coords",
    "heatmap_to_original",
]

#: Side of the square image the network takes. 128 keeps 5-fold CV and the
#: final training inside a 2-core CPU budget; at 256 the same recipe did no
#: better on a held-out fold. Lesions in mini-MIAS have a median radius of
#: ~5 px at this size, so the smallest calcifications are below one pixel.
INPUT_SIZE = 128

_MASK_THRESHOLD = 0.08  # fraction of the image's 99.5th percentile


@dataclass(frozen=True)
class Geometry:
    """How an original image maps into model space.

    model = ((original mirrored if ``flipped``) cropped at ``(top, left)``)
    padded to ``side`` x ``side`` and scaled by ``scale`` (= INPUT_SIZE/side).
    """

    height: int
    width: int
    flipped: bool
    top: int
    left: int
    side: int
    scale: float


@dataclass(frozen=True)
class Preprocessed:
    """A model-ready image: float32 ``image`` in [0, 1], shape (S, S), zero
    outside the breast; ``mask`` (bool, S x S) the breast in model space."""

    image: np.ndarray
    mask: np.ndarray
    geometry: Geometry


def _as_float(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:  # RGB(A) screenshots or PNGs: take luminance
        image = image[..., :3].mean(axis=2)
    if image.ndim != 2:
        raise InputImageError(
            f"expected a 2-D greyscale mammogram, got shape {image.shape}; "
            "pass the pixel array of a single frame"
        )
    return image.astype(np.float32)


def breast_mask(image: np.ndarray) -> np.ndarray:
    """Boolean mask of the breast: largest bright connected region, holes filled."""
    img = _as_float(image)
    top = float(np.percentile(img, 99.5))
    if top <= 0:
        return np.zeros(img.shape, dtype=bool)
    smooth = ndimage.uniform_filter(img, size=5)
    fg = smooth > _MASK_THRESHOLD * top
    fg = ndimage.binary_opening(fg, structure=np.ones((5, 5), bool))
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.zeros(img.shape, dtype=bool)
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    mask = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def chest_wall_on_right(mask: np.ndarray) -> bool:
    """True when most of the breast lies in the right half (chest wall right)."""
    w = mask.shape[1]
    cols = mask.sum(axis=0)
    return bool(cols[w // 2 :].sum() > cols[: w // 2].sum())


def _resize(a: np.ndarray, size: int, resample) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((size, size), resample=resample))


def preprocess(image: np.ndarray, size: int = INPUT_SIZE) -> Preprocessed:
    """Turn one raw mammogram (any bit depth, H x W) into the network's input."""
    img = _as_float(image)
    h, w = img.shape
    mask = breast_mask(img)
    if mask.sum() < 0.01 * h * w:
        # No breast found (blank or inverted image): fall back to the whole
        # frame so the model still answers; the score will be low-confidence.
        mask = np.ones_like(mask)
    flipped = chest_wall_on_right(mask)
    if flipped:
        img, mask = img[:, ::-1], mask[:, ::-1]
    rows, cols = np.nonzero(mask)
    top, bottom = int(rows.min()), int(rows.max()) + 1
    left, right = int(cols.min()), int(cols.max()) + 1
    side = max(bottom - top, right - left)
    crop = np.zeros((side, side), np.float32)
    cmask = np.zeros((side, side), bool)
    # chest wall stays at the left edge; pad to the right (nipple side) and bottom
    crop[: bottom - top, : right - left] = img[top:bottom, left:right]
    cmask[: bottom - top, : right - left] = mask[top:bottom, left:right]
    vals = crop[cmask]
    lo, hi = np.percentile(vals, [1.0, 99.0])
    win = np.clip((crop - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    win[~cmask] = 0.0
    out = _resize(win.astype(np.float32), size, Image.Resampling.BOX)
    out_mask = _resize(cmask.astype(np.uint8) * 255, size, Image.Resampling.BOX) >= 128
    out = np.where(out_mask, out, 0.0).astype(np.float32)
    geom = Geometry(h, w, flipped, top, left, side, size / side)
    return Preprocessed(np.ascontiguousarray(out), out_mask, geom)


def to_model_coords(geom: Geometry, x: float, y: float, r: float) -> tuple[float, float, float]:
    """Map a lesion circle (original pixels, y from the top) into model space."""
    if geom.flipped:
        x = geom.width - 1 - x
    return ((x - geom.left) * geom.scale, (y - geom.top) * geom.scale, r * geom.scale)


def heatmap_to_original(geom: Geometry, heat: np.ndarray) -> np.ndarray:
    """Bring a model-space heatmap (any square resolution) back onto the
    original image grid, so the kiosk can overlay it on what the clinic sent."""
    heat = np.asarray(heat, np.float32)
    side_px = max(int(round(geom.side)), 1)
    big = np.asarray(
        Image.fromarray(heat).resize((side_px, side_px), resample=Image.Resampling.BILINEAR)
    )
    out = np.zeros((geom.height, geom.width), np.float32)
    hh = min(side_px, geom.height - geom.top)
    ww = min(side_px, geom.width - geom.left)
    out[geom.top : geom.top + hh, geom.left : geom.left + ww] = big[:hh, :ww]
    if geom.flipped:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)
