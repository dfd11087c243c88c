"""Preprocessing invariants: what training saw is what the box sees."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import InputImageError
from models.preprocess import INPUT_SIZE, block_mean, breast_mask, heatmap_to_original, preprocess, to_model_coords, to_work, work_factor
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


def test_images_the_model_was_trained_on_are_not_reduced_so_their_input_is_unchanged():
    # mini-MIAS and the synthetic pretraining images are 512 px: below twice WORK_SCALE * INPUT_SIZE
    for lat in ("L", "R"):
        s = generate(7, "C", finding="mass", laterality=lat, size=512, bit_depth=12)
        assert work_factor(*s.image.shape) == 1
        fast, ref = preprocess(s.image), preprocess(s.image, reduce=False)
        np.testing.assert_array_equal(fast.image, ref.image)
        assert fast.geometry == ref.geometry


def test_block_mean_is_the_mean_of_each_whole_block():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 1 << 14, size=(61, 47), dtype=np.uint16)
    got = block_mean(img, 6)
    want = img[:60, :42].astype(np.float64).reshape(10, 6, 7, 6).mean(axis=(1, 3))
    assert got.dtype == np.float32 and got.shape == (10, 7)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_large_image_is_reduced_by_an_integer_factor_and_mapped_back_to_its_own_grid():
    s = generate(8, "B", finding="mass", laterality="R", size=512)
    # 3072 x 3077: six times larger, with 5 blank columns on the nipple side (width not a multiple of 6)
    big = np.pad(np.kron(s.image.astype(np.uint16), np.ones((6, 6), np.uint16)), ((0, 0), (5, 0)))
    work = to_work(big)
    assert work.factor == 6 and work.pixels.shape == (512, 512) and (work.height, work.width) == big.shape
    p = preprocess(big)
    assert (p.geometry.height, p.geometry.width) == big.shape and p.geometry.flipped
    # the lesion lands where it does in the small original (same image, 6 times larger)
    x, y, r = s.lesion
    mx, my, _ = to_model_coords(p.geometry, x * 6 + 5 + 2.5, y * 6 + 2.5, r * 6)
    sx, sy, _ = to_model_coords(preprocess(s.image).geometry, x, y, r)
    assert abs(mx - sx) < 1.5 and abs(my - sy) < 1.5


@pytest.mark.parametrize("lat", ["L", "R"])
def test_heatmap_on_a_reduced_grid_peaks_where_the_full_grid_does(lat):
    s = generate(9, "B", finding="mass", laterality=lat, size=512)
    big = np.kron(s.image.astype(np.uint16), np.ones((3, 3), np.uint16))[:, :1531]
    p = preprocess(big)
    heat = np.zeros((16, 16), np.float32)
    heat[5, 9] = 1.0
    full = heatmap_to_original(p.geometry, heat)
    small = heatmap_to_original(p.geometry, heat, factor=4)
    assert full.shape == big.shape and small.shape == (-(-big.shape[0] // 4), -(-big.shape[1] // 4))
    fy, fx = np.unravel_index(np.argmax(full), full.shape)
    sy, sx = np.unravel_index(np.argmax(small), small.shape)
    assert abs(sy * 4 + 2 - fy) <= 6 and abs(sx * 4 + 2 - fx) <= 6
