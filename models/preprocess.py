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

Before step 1, an image much larger than the network's input (a real
detector image, 3000-4700 x 2300-3300 pixels) is reduced to a **work image**
by an integer-factor block mean, so that its shorter side stays at least
``WORK_SCALE`` times the input size. Steps 1-5 then run on about a
thirtieth of the pixels. The model sees nearly the same input (step 5 averages
the same pixels anyway; tests/models/test_preprocess.py bounds the
difference on a real-size image), and the mask's 5-pixel smoothing and
opening act at the scale they had in training, where the mini-MIAS images
were about four times the input size. Images up to ``2 * WORK_SCALE`` times
the input size (everything the model was trained on) are not reduced at
all, so their input is exactly what it was. A decoder that can decode at a
reduced resolution (JPEG 2000) hands over a :class:`WorkImage` directly.

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
    "WORK_SCALE",
    "Geometry",
    "Preprocessed",
    "WorkImage",
    "block_mean",
    "breast_mask",
    "chest_wall_on_right",
    "preprocess",
    "to_model_coords",
    "to_work",
    "heatmap_to_original",
    "work_factor",
]

#: Side of the square image the network takes. 128 keeps 5-fold CV and the
#: final training inside a 2-core CPU budget; at 256 the same recipe did no
#: better on a held-out fold. Lesions in mini-MIAS have a median radius of
#: ~5 px at this size, so the smallest calcifications are below one pixel.
INPUT_SIZE = 128

#: A work image keeps its shorter side at least this many times the input
#: size: the scale mini-MIAS had in training (512 px images, 128 px input).
WORK_SCALE = 4

_MASK_THRESHOLD = 0.08  # fraction of the image's 99.5th percentile
_MASK_KERNEL = 5  # smoothing and opening window, original pixels


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


@dataclass(frozen=True)
class WorkImage:
    """A mammogram at reduced resolution, and where it sits on the original grid.

    Work pixel (i, j) stands for the original pixels ``[i*factor, (i+1)*factor)
    x [j*factor, (j+1)*factor)`` of the ``height`` x ``width`` original (a block
    mean, or a JPEG 2000 resolution level). With ``factor`` 1 it is the image.
    """

    pixels: np.ndarray
    factor: int
    height: int
    width: int


def work_factor(height: int, width: int, size: int = INPUT_SIZE) -> int:
    """The block size that reduces an image to its work image (1: not reduced)."""
    return max(1, min(height, width) // (WORK_SCALE * size))


def block_mean(image: np.ndarray, k: int) -> np.ndarray:
    """Mean of each ``k`` x ``k`` block (float32), the partial blocks at the bottom and right dropped.

    Summed with strided adds into a (H/k, W) accumulator, so a 14-bit detector
    image is never copied whole into floats: the temporary memory is about
    ``4/k`` times the image's.
    """
    img = np.asarray(image)
    if k == 1:
        return img.astype(np.float32)
    h, w = img.shape[0] // k, img.shape[1] // k
    if img.dtype.kind == "u" and img.dtype.itemsize <= 2:
        acc_dtype: type = np.uint32
    elif img.dtype.kind in "iub":
        acc_dtype = np.int64
    else:
        acc_dtype = np.float64
    view = img[: h * k, : w * k]
    rows = np.zeros((h, w * k), acc_dtype)
    for i in range(k):
        rows += view[i::k]
    out = np.zeros((h, w), acc_dtype)
    for j in range(k):
        out += rows[:, j::k]
    return (out / (k * k)).astype(np.float32)


def to_work(image: np.ndarray | WorkImage, size: int = INPUT_SIZE) -> WorkImage:
    """Reduce an image (or a partly reduced work image) to its work image; small images pass unchanged."""
    if isinstance(image, WorkImage):
        pixels, factor, height, width = image.pixels, image.factor, image.height, image.width
    else:
        pixels = np.asarray(image)
        if pixels.ndim == 3:
            pixels = _as_float(pixels)
        factor, (height, width) = 1, pixels.shape[:2]
    if pixels.ndim != 2:
        _as_float(pixels)  # raises the advice for a non-image
    k = work_factor(pixels.shape[0], pixels.shape[1], size)
    if k == 1:
        return WorkImage(pixels, factor, height, width)
    return WorkImage(block_mean(pixels, k), factor * k, height, width)


def _as_float(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:  # RGB(A) screenshots or PNGs: take luminance
        image = image[..., :3].mean(axis=2)
    if image.ndim != 2:
        raise InputImageError(
            f"expected a 2-D greyscale mammogram, got shape {image.shape}; "
            "pass the pixel array of a single frame"
        )
    return image.astype(np.float32)


def _kernel(factor: int) -> int:
    """The mask's 5-pixel smoothing and opening, in work pixels of ``factor`` original pixels (odd, at least 1)."""
    return max(1, 2 * int(round((_MASK_KERNEL / factor - 1) / 2)) + 1)


def breast_mask(image: np.ndarray, kernel: int = 5) -> np.ndarray:
    """Boolean mask of the breast: largest bright connected region, holes filled.

    ``kernel`` is the side of the smoothing and opening window (5 on the
    original grid; smaller on a work image so it acts on the same tissue).
    """
    img = _as_float(image)
    top = float(np.percentile(img, 99.5))
    if top <= 0:
        return np.zeros(img.shape, dtype=bool)
    smooth = ndimage.uniform_filter(img, size=kernel) if kernel > 1 else img
    fg = smooth > _MASK_THRESHOLD * top
    if kernel > 1:
        fg = ndimage.binary_opening(fg, structure=np.ones((kernel, kernel), bool))
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


def preprocess(image: np.ndarray | WorkImage, size: int = INPUT_SIZE, *, reduce: bool = True) -> Preprocessed:
    """Turn one raw mammogram (any bit depth, H x W) into the network's input.

    ``reduce=False`` runs every step at full resolution: the reference the
    work-image path is tested against, far too slow and large for the box.
    """
    work = to_work(image, size) if reduce else (image if isinstance(image, WorkImage) else WorkImage(np.asarray(image), 1, *np.shape(image)[:2]))
    img = _as_float(work.pixels)
    h, w = img.shape
    mask = breast_mask(img, _kernel(work.factor))
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
    k = work.factor
    # back on the original grid: a mirrored work image starts ``width - w*k`` original pixels in
    left_px = (work.width - w * k if flipped else 0) + left * k
    geom = Geometry(work.height, work.width, flipped, top * k, left_px, side * k, size / (side * k))
    return Preprocessed(np.ascontiguousarray(out), out_mask, geom)


def to_model_coords(geom: Geometry, x: float, y: float, r: float) -> tuple[float, float, float]:
    """Map a lesion circle (original pixels, y from the top) into model space."""
    if geom.flipped:
        x = geom.width - 1 - x
    return ((x - geom.left) * geom.scale, (y - geom.top) * geom.scale, r * geom.scale)


def heatmap_to_original(geom: Geometry, heat: np.ndarray, factor: int = 1) -> np.ndarray:
    """Bring a model-space heatmap (any square resolution) back onto the
    original image grid, so the kiosk can overlay it on what the clinic sent.

    With ``factor`` > 1 the grid is the original's reduced ``factor`` times
    (``ceil(H/factor)`` x ``ceil(W/factor)``, cell (i, j) over original pixels
    ``[i*factor, (i+1)*factor)``): a display needs no more, and a full-size
    float heatmap of a detector image is 50 MB.
    """
    heat = np.asarray(heat, np.float32)
    height, width = -(-geom.height // factor), -(-geom.width // factor)
    side_px = max(int(round(geom.side / factor)), 1)
    top, left = int(round(geom.top / factor)), int(round(geom.left / factor))
    if geom.flipped and factor > 1:
        # the grid's cells are aligned on the unmirrored image: mirrored, the first cell is short by width*factor - W
        left = int(round((geom.left + (width * factor - geom.width)) / factor))
    big = np.asarray(
        Image.fromarray(heat).resize((side_px, side_px), resample=Image.Resampling.BILINEAR)
    )
    out = np.zeros((height, width), np.float32)
    t0, l0 = max(top, 0), max(left, 0)
    hh = min(side_px - (t0 - top), height - t0)
    ww = min(side_px - (l0 - left), width - l0)
    if hh > 0 and ww > 0:
        out[t0 : t0 + hh, l0 : l0 + ww] = big[t0 - top : t0 - top + hh, l0 - left : l0 - left + ww]
    if geom.flipped:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)
