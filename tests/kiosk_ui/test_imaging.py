"""The kiosk's picture of a stored view: bright = dense, whatever polarity the modality sent (MONOCHROME1 is kept as sent)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from edge_agent.ingest import mg
from kiosk_ui.imaging import view_png


def _png(pixels: np.ndarray, photometric: str) -> np.ndarray:
    ds = mg.mammogram(pixels, patient=mg.fake_patient(2), laterality="L", view="CC")
    ds.PhotometricInterpretation = photometric
    with Image.open(io.BytesIO(view_png(mg.to_bytes(ds)))) as im:
        return np.asarray(im.convert("L")).astype(np.int16)


def test_monochrome1_is_shown_with_bright_tissue_like_monochrome2():
    breast = mg.synthetic_pixels(2, "L", 256)  # a left breast: tissue on the left, dark background on the right
    shown_m2 = _png(breast, "MONOCHROME2")
    shown_m1 = _png((255 - breast).astype(breast.dtype), "MONOCHROME1")  # the same image as a MONOCHROME1 detector stores it
    half = shown_m1.shape[1] // 2
    assert shown_m1[:, :half].mean() > shown_m1[:, half:].mean() + 40  # tissue bright, background dark
    assert np.abs(shown_m1 - shown_m2).max() <= 1


def test_the_view_is_shown_through_its_own_window_when_the_file_has_one():
    """A ramp 0..4095 with a narrow window (centre 1000, width 200): below it black, above it white, a ramp inside.
    Without a window in the file, the breast's percentiles set the grey scale instead."""
    ramp = np.tile(np.linspace(0, 4095, 256).astype(np.uint16), (64, 1))
    ds = mg.mammogram(ramp, patient=mg.fake_patient(2), laterality="L", view="CC")
    ds.WindowCenter, ds.WindowWidth = "1000", "200"
    with Image.open(io.BytesIO(view_png(mg.to_bytes(ds), max_side=256))) as im:
        row = np.asarray(im.convert("L")).astype(np.int16)[32]
    x = np.linspace(0, 4095, 256)
    assert row[x < 880].max() <= 2 and row[x > 1120].min() >= 253
    inside = row[(x > 930) & (x < 1070)]
    assert inside.min() > 20 and inside.max() < 235 and np.all(np.diff(inside) >= 0)
    del ds.WindowCenter, ds.WindowWidth
    with Image.open(io.BytesIO(view_png(mg.to_bytes(ds), max_side=256))) as im:
        plain = np.asarray(im.convert("L")).astype(np.int16)[32]
    assert 100 < plain[128] < 160  # the middle of the ramp is mid-grey when the percentiles set the scale
