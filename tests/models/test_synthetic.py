"""The synthetic generator: deterministic, honest masks and labels, always synthetic."""

from __future__ import annotations

import numpy as np
import pytest

from models.synthetic import DENSITIES, generate


def test_same_seed_same_image():
    a, b = generate(7, "C", "mass"), generate(7, "C", "mass")
    assert np.array_equal(a.image, b.image) and a.lesion == b.lesion


@pytest.mark.parametrize("finding,malignant", [("mass", False), ("spiculated", True), ("calcification", True)])
def test_findings_have_masks_inside_the_breast(finding, malignant):
    s = generate(11, "B", finding)
    assert s.synthetic and s.abnormal and s.malignant == malignant
    assert s.label == ("malignant" if malignant else "benign")
    assert s.mask.any() and not (s.mask & ~s.breast_mask).any()
    x, y, r = s.lesion
    ys, xs = np.nonzero(s.mask)
    assert np.all(np.hypot(xs - x, ys - y) <= r + 2)


def test_normal_has_no_finding():
    s = generate(12, "D")
    assert s.label == "normal" and not s.mask.any() and s.lesion is None and s.synthetic


def test_density_raises_the_dense_fraction():
    means = []
    for d in DENSITIES:
        vals = [generate(s, d, laterality="L").image for s in range(3)]
        means.append(np.mean([v[generate(s, d, laterality="L").breast_mask].mean() for s, v in enumerate(vals)]))
    assert means == sorted(means)


def test_laterality_puts_the_chest_wall_on_its_side():
    left, right = generate(13, laterality="L"), generate(13, laterality="R")
    w = left.image.shape[1]
    assert left.breast_mask[:, : w // 2].sum() > left.breast_mask[:, w // 2 :].sum()
    assert right.breast_mask[:, w // 2 :].sum() > right.breast_mask[:, : w // 2].sum()


def test_sizes_and_bit_depths():
    s = generate(14, size=128, bit_depth=12)
    assert s.image.shape == (128, 128) and s.image.dtype == np.uint16 and s.image.max() <= 4095


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        generate(1, density="E")
    with pytest.raises(ValueError):
        generate(1, finding="tumour")
