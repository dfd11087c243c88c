"""Pixels for the screen and the referral: a stored DICOM view as an 8-bit PNG, a heatmap as a coloured overlay."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image
from pydicom import dcmread

from edge_agent.errors import IntegrityError


def view_png(dicom_bytes: bytes, max_side: int = 768) -> bytes:
    """The image windowed to 8 bits (1st-99.5th percentile of the breast, so film borders do not wash it out)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(io.BytesIO(dicom_bytes))
            arr = ds.pixel_array.astype(np.float32)
    except Exception as exc:
        raise IntegrityError(f"A stored image cannot be decoded ({type(exc).__name__}); re-send the study from the modality.") from None
    if arr.ndim == 3:
        arr = arr[0] if str(ds.get("SamplesPerPixel", 1)) == "1" else arr.mean(axis=-1)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = arr.max() - arr
    body = arr[arr > arr.min()]
    lo, hi = (np.percentile(body, [1, 99.5]) if body.size else (0.0, 1.0))
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max()) or 1.0
    img8 = np.clip((arr - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    im = Image.fromarray(img8, "L")
    im.thumbnail((max_side, max_side))
    return _png(im)


def heatmap_overlay_png(heatmap_png: bytes, max_side: int = 768) -> bytes:
    """An RGBA overlay: transparent where the model saw nothing, warm and more opaque where it looked hardest."""
    with Image.open(io.BytesIO(heatmap_png)) as src:
        h = np.asarray(src.convert("L"), dtype=np.float32) / 255.0
    rgba = np.zeros(h.shape + (4,), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = np.clip(255 * (1.0 - h) * 0.9, 0, 255).astype(np.uint8)
    rgba[..., 2] = 0
    rgba[..., 3] = np.clip((h - 0.15) / 0.85 * 190, 0, 190).astype(np.uint8)
    im = Image.fromarray(rgba, "RGBA")
    im.thumbnail((max_side, max_side))
    return _png(im)


def composite(base_png: bytes, overlay_png: bytes) -> bytes:
    with Image.open(io.BytesIO(base_png)) as b, Image.open(io.BytesIO(overlay_png)) as o:
        base = b.convert("RGBA")
        over = o.convert("RGBA").resize(base.size)
        return _png(Image.alpha_composite(base, over).convert("RGB"))


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
