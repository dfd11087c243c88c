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
