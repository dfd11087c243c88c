"""Real-size images (3328 x 4096, 14 bits): the reduced path gives the model the input the full-resolution reference does."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.inference import realsize
from edge_agent.inference.decode import work_image
from edge_agent.ingest import mg
from models.preprocess import Preprocessed, preprocess
from models.runtime import Screener

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def right_breast() -> tuple[np.ndarray, Preprocessed]:
    """A right breast (mirrored by preprocessing; 3328 is not a multiple of the block size 6) and its reference input."""
    img = realsize.pixels(7, "R")
    return img, preprocess(img, reduce=False)


def _stored(img: np.ndarray, syntax: str) -> bytes:
    ts = realsize.SYNTAXES[syntax]
    ds = realsize.instance(img, realsize.encode(img, ts), ts, patient=mg.fake_patient(7), laterality="R", view="CC",
                           study_uid="1.2.826.0.1.3680043.8.498.7", instance_number=1)
    return mg.to_bytes(ds)


def _assert_close_to_reference(p: Preprocessed, ref: Preprocessed, factor: int) -> None:
    """Within what the reduction costs: sub-block crop edges and a few mask pixels at the skin line.

    Measured on such images: mean |difference| 0.002-0.009, 99th percentile 0.02-0.055, at most
    about 40 of the 16384 mask pixels differ; the INT8 model's probability moved by 0 to 4 of its
    quantization steps (up to 0.055), about what re-drawing the image's noise does to it.
    """
    d = np.abs(p.image - ref.image)
    assert p.image.shape == ref.image.shape and p.image.dtype == np.float32
    assert d.mean() < 0.012 and np.percentile(d, 99) < 0.08
    assert (p.mask != ref.mask).mean() < 0.005
    g, r = p.geometry, ref.geometry
    assert (g.height, g.width, g.flipped) == (r.height, r.width, r.flipped)
    assert abs(g.top - r.top) <= 2 * factor and abs(g.left - r.left) <= 2 * factor and abs(g.side - r.side) <= 2 * factor


@pytest.mark.parametrize("syntax", ["native", "rle"])
def test_real_size_input_through_the_block_mean_matches_the_full_resolution_reference(right_breast, syntax):
    img, ref = right_breast
    work = work_image(_stored(img, syntax))
    assert work.factor == 6 and work.pixels.shape == (4096 // 6, 3328 // 6) and (work.height, work.width) == img.shape
    p = preprocess(work)
    _assert_close_to_reference(p, ref, work.factor)
    screener = Screener(threads=1)
    assert abs(screener.score_preprocessed(p, heatmap_side=768).p_abnormal - screener.score_preprocessed(ref, heatmap_side=768).p_abnormal) < 0.1


def test_real_size_jpeg2000_is_decoded_at_a_reduced_level_and_matches_the_reference(right_breast):
    if not realsize.j2k_encoding_available():
        pytest.skip("no JPEG 2000 encoder here (pylibjpeg-openjpeg) to make the test file")
    img, ref = right_breast
    work = work_image(_stored(img, "j2k"))
    assert work.factor == 8 and work.pixels.shape == (512, 416)  # the 1/8 resolution level, never the full image
    p = preprocess(work)
    _assert_close_to_reference(p, ref, work.factor)


def test_small_images_are_decoded_whole(right_breast):
    img = right_breast[0][:900, -700:]
    work = work_image(_stored(np.ascontiguousarray(img), "rle"))
    assert work.factor == 1
    np.testing.assert_array_equal(work.pixels, img)
