"""Is there text burned into the pixels? A cheap look for a line of bright, character-sized marks on dark ground.

Used when a file does not say ``BurnedInAnnotation=NO``: a name or an ID
written into the image survives any header de-identification, so such an
image goes to quarantine for a person to look at. The rule finds rows of at
least ``min_chars`` marks of similar height on a common baseline, each
surrounded by background. Laterality markers ("R MLO", 2-5 characters) stay
below the threshold; on the 322 mini-MIAS films no image reaches 3 marks,
while ultrasound screens with burned-in text reach 5-30.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MAX_SIDE = 1024


def _plane(pixels: np.ndarray) -> np.ndarray:
    img = np.asarray(pixels)
    if img.ndim == 4:
        img = img[0]
    if img.ndim == 3:
        img = img[..., 0] if img.shape[-1] in (3, 4) else img[0]
    return img


def _pool(img: np.ndarray, step: int, combine: np.ufunc) -> np.ndarray:
    """Max (or min) over step x step blocks, as step² elementwise maxima (a strided max over two axes is several times slower)."""
    h, w = (img.shape[0] // step) * step, (img.shape[1] // step) * step
    blocks = img[:h, :w].reshape(h // step, step, w // step, step)
    out = blocks[:, 0, :, 0].copy()
    for i in range(step):
        for j in range(step):
            if i or j:
                combine(out, blocks[:, i, :, j], out=out)
    return out


def _low_percentile(img: np.ndarray, q: float) -> float:
    """np.percentile(img, q) (linear), from a histogram for small integer images: no sort of a million values."""
    if img.dtype.kind not in "ui" or img.dtype.itemsize > 2:
        return float(np.percentile(img, q))
    base = 0 if img.dtype.kind == "u" else int(img.min())
    counts = np.cumsum(np.bincount(img.ravel() if base == 0 else img.ravel().astype(np.int32) - base))
    rank = q / 100 * (img.size - 1)
    k = int(np.floor(rank))
    lo = int(np.searchsorted(counts, k, side="right"))
    hi = int(np.searchsorted(counts, min(k + 1, img.size - 1), side="right"))
    return base + lo + (hi - lo) * (rank - k)


def _to_uint8(pixels: np.ndarray, dense_dark: bool = False) -> np.ndarray:
    """The first plane at most MAX_SIDE wide, scaled so the background is 0 and the brightest mark 255.

    ``dense_dark`` (MONOCHROME1, where text is displayed bright but stored
    low) gives exactly the image the inverted pixels would give, without
    inverting them: min-pool instead of max-pool, and the 99.5th percentile
    as the background level.
    """
    img = _plane(pixels)
    step = max(1, int(np.ceil(max(img.shape) / MAX_SIDE)))
    if step > 1:  # pool so thin bright strokes survive the shrink; in the stored type, max commutes with the cast
        img = _pool(img, step, np.minimum if dense_dark else np.maximum)
    if dense_dark:
        lo, hi = _low_percentile(img, 99.5), float(img.min())
    else:
        lo, hi = _low_percentile(img, 0.5), float(img.max())
    if (lo - hi if dense_dark else hi - lo) <= 0:
        return np.zeros(img.shape, np.uint8)
    scaled = (img.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    img8: np.ndarray = np.clip(scaled, 0, 255).astype(np.uint8)
    return img8


def _closing_2x2(b: np.ndarray) -> np.ndarray:
    """ndimage.binary_closing(b, np.ones((2, 2))), bit for bit, by shifted ORs and ANDs: about 20x faster on a large image."""
    d = b.copy()
    d[:-1, :] |= b[1:, :]
    dilated = d.copy()
    dilated[:, :-1] |= d[:, 1:]
    out = np.zeros_like(dilated)
    out[1:, 1:] = dilated[1:, 1:] & dilated[:-1, 1:] & dilated[1:, :-1] & dilated[:-1, :-1]
    return out


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    r = np.mod(i, 2 * n)
    mirrored: np.ndarray = np.where(r >= n, 2 * n - r - 1, r)
    return mirrored


def _mostly_dark(dark: np.ndarray, size: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """uniform_filter(dark, size) > 0.5 at the given points only (same window and 'reflect' edges), not over the whole image."""
    out = np.empty(len(ys), dtype=bool)
    offsets = np.arange(size) - size // 2
    for s in range(0, len(ys), 256):
        rows = _reflect(ys[s:s + 256, None] + offsets, dark.shape[0])
        cols = _reflect(xs[s:s + 256, None] + offsets, dark.shape[1])
        out[s:s + 256] = 2 * dark[rows[:, :, None], cols[:, None, :]].sum(axis=(1, 2)) > size * size
    return out


def _marks(labels: np.ndarray, height: int, dark: np.ndarray) -> np.ndarray:
    """Character-sized marks surrounded by background: rows of (top, bottom, left)."""
    boxes = np.array([(sl[0].start, sl[0].stop, sl[1].start, sl[1].stop) for sl in ndimage.find_objects(labels)], dtype=np.int64)
    if boxes.size == 0:
        return boxes.reshape(0, 3)
    h, w = boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]
    boxes = boxes[(h >= max(6, 0.008 * height)) & (h <= 0.05 * height) & (w >= 2) & (w <= 1.2 * h)]
    cy, cx = (boxes[:, 0] + boxes[:, 1]) // 2, (boxes[:, 2] + boxes[:, 3]) // 2
    kept: np.ndarray = boxes[_mostly_dark(dark, max(9, height // 40), cy, cx)][:, :3]
    return kept


def _longest_line(marks: np.ndarray) -> int:
    """The most marks sharing a baseline with one of them (similar height, close enough to read as one line)."""
    best = 0
    size, centre, left = (marks[:, 1] - marks[:, 0]).astype(np.float64), (marks[:, 0] + marks[:, 1]) / 2, marks[:, 2]
    for start in range(0, len(marks), 512):  # bounded memory: 512 x n comparisons at a time
        s, c, l0 = size[start:start + 512, None], centre[start:start + 512, None], left[start:start + 512, None]
        line = (np.abs(centre[None, :] - c) <= 0.3 * s) & (np.abs(size[None, :] - s) <= 0.5 * s) & (np.abs(left[None, :] - l0) <= 12 * s)
        best = max(best, int(line.sum(axis=1).max()))
    return best


def text_line_length(pixels: np.ndarray, dense_dark: bool = False) -> int:
    """The number of character-like marks on the longest text-like line found (0 when none); ``dense_dark`` for MONOCHROME1."""
    img8 = _to_uint8(pixels, dense_dark)
    labels, n = ndimage.label(_closing_2x2(img8 >= 128))
    if n == 0 or n > 20000:  # nothing bright, or noise everywhere: not text
        return 0
    marks = _marks(labels, img8.shape[0], img8 < 64)
    return _longest_line(marks) if len(marks) else 0


def suspect_text(pixels: np.ndarray, min_chars: int = 6, dense_dark: bool = False) -> bool:
    return text_line_length(pixels, dense_dark) >= min_chars
