"""Preprocessing invariants: what training saw is what the box sees."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import InputImageError
from models.preprocess import INPUT_SIZE, breast_mask, heatmap_to_original, preprocess, to_model_coords
from models.synthetic import generate


@pytest.mark.parametrize("lat", ["L", "R"])
def test_output_is_canonical_with_chest_wall_left(lat):
    s = generate(1, "B", laterality=lat)
    p = preprocess(s.image)
    assert p.image.shape == (INPUT_SIZE, INPUT_SIZE) and p.image.dtype == np.float32
    assert 0.0 <= p.image.min() and p.image.max() <= 1.0
    half = INPUT_SIZE // 2
    assert p.mask[:, :half].sum() > p.mask[:, half:].sum()
    assert p.geometry.flipped == (lat == "R")


def test_left_and_mirrored_right_give_the_same_input():
    s = generate(2, "C", finding="mass", laterality="L")
    a = preprocess(s.image).image
    b = preprocess(s.image[:, ::-1].copy()).image
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_film_marker_and_background_are_zeroed():
    s = generate(3, "A")
    p = preprocess(s.image)
    assert np.all(p.image[~p.mask] == 0.0)
    m = breast_mask(s.image)
    # the marker (bright block outside the breast) is not part of the mask
    assert m[(s.image > 200) & ~s.breast_mask].mean() < 0.05
    iou = (m & s.breast_mask).sum() / (m | s.breast_mask).sum()
    assert iou > 0.9


def test_bit_depth_does_not_change_the_input():
    a = generate(4, "B", finding="spiculated", bit_depth=8)
    b = generate(4, "B", finding="spiculated", bit_depth=12)
    np.testing.assert_allclose(preprocess(a.image).image, preprocess(b.image).image, atol=0.03)


def test_lesion_coordinates_follow_the_image_into_model_space():
    for lat in ("L", "R"):
        s = generate(5, "B", finding="mass", laterality=lat)
        p = preprocess(s.image)
        x, y, r = to_model_coords(p.geometry, *s.lesion)
        assert p.mask[int(y), int(x)]
        # the lesion is brighter than the breast around it in model space
        assert p.image[int(y), int(x)] > np.median(p.image[p.mask])


def test_heatmap_returns_to_the_original_grid_and_side():
    s = generate(6, "B", finding="mass", laterality="R")
    p = preprocess(s.image)
    x, y, _ = to_model_coords(p.geometry, *s.lesion)
    heat = np.zeros((32, 32), np.float32)
    heat[int(y) * 32 // INPUT_SIZE, int(x) * 32 // INPUT_SIZE] = 1.0
    back = heatmap_to_original(p.geometry, heat)
    assert back.shape == s.image.shape
    py, px = np.unravel_index(np.argmax(back), back.shape)
    lx, ly, lr = s.lesion
    assert np.hypot(px - lx, py - ly) < lr + 2 * s.image.shape[0] / 32


def test_non_image_input_is_refused_with_advice():
    with pytest.raises(InputImageError, match="single frame"):
        preprocess(np.zeros((2, 3, 4, 5)))
