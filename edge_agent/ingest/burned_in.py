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


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    img = np.asarray(pixels)
    if img.ndim == 4:
        img = img[0]
    if img.ndim == 3:
        img = img[..., 0] if img.shape[-1] in (3, 4) else img[0]
    img = img.astype(np.float32)
    step = max(1, int(np.ceil(max(img.shape) / MAX_SIDE)))
    if step > 1:  # max-pool so thin bright strokes survive the shrink
        h, w = (img.shape[0] // step) * step, (img.shape[1] // step) * step
        img = img[:h, :w].reshape(h // step, step, w // step, step).max(axis=(1, 3))
    lo, hi = float(np.percentile(img, 0.5)), float(img.max())
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    return np.clip((img - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def text_line_length(pixels: np.ndarray) -> int:
    """The number of character-like marks on the longest text-like line found (0 when none)."""
    img8 = _to_uint8(pixels)
    height, width = img8.shape
    bright = ndimage.binary_closing(img8 >= 128, structure=np.ones((2, 2)))
    labels, n = ndimage.label(bright)
    if n == 0 or n > 20000:  # nothing bright, or noise everywhere: not text
        return 0
    dark = ndimage.uniform_filter((img8 < 64).astype(np.float32), size=max(9, height // 40))
    marks = []
    for sl in ndimage.find_objects(labels):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if max(6, 0.008 * height) <= h <= 0.05 * height and 2 <= w <= 1.2 * h:
            cy, cx = (sl[0].start + sl[0].stop) // 2, (sl[1].start + sl[1].stop) // 2
            if dark[cy, cx] > 0.5:
                marks.append((sl[0].start, sl[0].stop, sl[1].start))
    best = 0
    for top, bottom, left in marks:
        size, centre = bottom - top, (top + bottom) / 2
        line = [m for m in marks if abs((m[0] + m[1]) / 2 - centre) <= 0.3 * size
                and abs((m[1] - m[0]) - size) <= 0.5 * size and abs(m[2] - left) <= 12 * size]
        best = max(best, len(line))
    return best


def suspect_text(pixels: np.ndarray, min_chars: int = 6) -> bool:
    return text_line_length(pixels) >= min_chars
