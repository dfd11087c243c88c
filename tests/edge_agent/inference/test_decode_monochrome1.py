"""MONOCHROME1 is kept as sent by ingest, so the model's decode inverts it: bright = dense, whatever the sender's polarity."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.inference import realsize
from edge_agent.inference.decode import work_image
from edge_agent.ingest import mg
from models.preprocess import preprocess

BITS = 14
TOP = (1 << BITS) - 1


@pytest.fixture(scope="module")
def breast() -> np.ndarray:
    """A 14-bit view large enough for the reduced paths (block mean 2, JPEG 2000 level 1/2)."""
    return realsize.pixels(3, "L", width=1100, height=1400, bits=BITS)


def _stored(img: np.ndarray, syntax: str, photometric: str) -> bytes:
    ts = realsize.SYNTAXES[syntax]
    ds = realsize.instance(img, realsize.encode(img, ts, BITS), ts, patient=mg.fake_patient(3), laterality="L", view="CC",
                           study_uid="1.2.826.0.1.3680043.8.498.3", instance_number=1, bits=BITS)
    ds.PhotometricInterpretation = photometric
    return mg.to_bytes(ds)


@pytest.mark.parametrize("syntax", ["native", "rle"])
def test_monochrome1_gives_the_model_the_input_of_the_same_image_stored_as_monochrome2(breast, syntax):
    dense_dark = (TOP - breast).astype(np.uint16)  # what a MONOCHROME1 detector stores for this breast
    m1 = work_image(_stored(dense_dark, syntax, "MONOCHROME1"))
    m2 = work_image(_stored(breast, syntax, "MONOCHROME2"))
    assert m1.factor == m2.factor == 2
    np.testing.assert_array_equal(m1.pixels, m2.pixels)
    p1, p2 = preprocess(m1), preprocess(m2)
    np.testing.assert_array_equal(p1.image, p2.image)
    np.testing.assert_array_equal(p1.mask, p2.mask)
    # and the stored polarity is what is inverted: read as MONOCHROME2 the same bytes give the negative
    assert not np.array_equal(work_image(_stored(dense_dark, syntax, "MONOCHROME2")).pixels, m2.pixels)


def test_monochrome1_jpeg2000_reduced_level_is_inverted_too(breast):
    if not realsize.j2k_encoding_available():
        pytest.skip("no JPEG 2000 encoder here (pylibjpeg-openjpeg) to make the test file")
    dense_dark = (TOP - breast).astype(np.uint16)
    m1 = work_image(_stored(dense_dark, "j2k", "MONOCHROME1"))
    m2 = work_image(_stored(breast, "j2k", "MONOCHROME2"))
    assert m1.factor == m2.factor == 2 and m1.pixels.shape == (700, 550)  # the 1/2 level, not the full image
    # the wavelet's integer rounding differs by up to two 14-bit levels between an image and its negative
    # (Pillow returns the level shifted to 16 bits, so one level is 4 here)
    assert np.abs(m1.pixels.astype(np.int64) - m2.pixels.astype(np.int64)).max() <= 2 * 4
    d = np.abs(preprocess(m1).image - preprocess(m2).image)
    assert d.max() < 1e-3
