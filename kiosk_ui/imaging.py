"""Pixels for the screen and the referral: a stored DICOM view as an 8-bit PNG, a heatmap as a coloured overlay."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image
from pydicom import dcmread

from edge_agent.errors import IntegrityError


def view_png(dicom_bytes: bytes, max_side: int = 768) -> bytes:
    """The image as 8 bits, through its own VOI LUT or window when it has one (pydicom applies it), else windowed to the
    1st-99.5th percentile of the breast so film borders do not wash it out. Bright is dense whatever the polarity."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(io.BytesIO(dicom_bytes))
            arr = ds.pixel_array.astype(np.float32)
    except Exception as exc:
        raise IntegrityError(f"A stored image cannot be decoded ({type(exc).__name__}); re-send the study from the modality.") from None
    if arr.ndim == 3:
        arr = arr[0] if str(ds.get("SamplesPerPixel", 1)) == "1" else arr.mean(axis=-1)
    unit = _voi_unit(ds, arr)
    if unit is None:  # no window in the file: 1st-99.5th percentile of the breast
        body = arr[arr > arr.min()]
        lo, hi = (np.percentile(body, [1, 99.5]) if body.size else (0.0, 1.0))
        if hi <= lo:
            lo, hi = float(arr.min()), float(arr.max()) or 1.0
        unit = np.clip((arr - lo) / (hi - lo), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        unit = 1.0 - unit
    img8 = np.clip(unit * 255.0, 0, 255).astype(np.uint8)
    im = Image.fromarray(img8, "L")
    im.thumbnail((max_side, max_side))
    return _png(im)


def _voi_unit(ds, arr: np.ndarray) -> np.ndarray | None:
    """The image through its own VOI LUT or window (the first one, as the modality meant it to be seen), scaled to 0..1;
    None when the file carries neither. pydicom applies the LUT or window; the output's range follows from the file."""
    from pydicom.pixels import apply_voi_lut

    if not ("VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = apply_voi_lut(arr, ds, index=0).astype(np.float32)
    except Exception:  # a malformed window is no reason to show nothing: fall back to the percentiles
        return None
    if "VOILUTSequence" in ds and not ("WindowCenter" in ds and "WindowWidth" in ds):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2] or 16)
        lo, hi = 0.0, float((1 << bits) - 1)
    else:
        bits = int(ds.get("BitsStored", 16))
        lo, hi = (float(-(1 << (bits - 1))), float((1 << (bits - 1)) - 1)) if ds.get("PixelRepresentation", 0) else (0.0, float((1 << bits) - 1))
    return np.clip((out - lo) / ((hi - lo) or 1.0), 0.0, 1.0)


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
