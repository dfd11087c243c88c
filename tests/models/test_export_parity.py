"""The shipped exports behave like the PyTorch model they came from.

Tolerances (measured on the 0.1.0 release over the 258 real images, stated
here so a regression shows):
* ONNX fp32 vs PyTorch: logits within 1e-3 (measured 4e-6: float rounding).
* INT8 ONNX vs fp32: abnormal probability within 0.10 on every image (measured
  worst 0.060) and 0.03 on average (measured 0.009).
* INT8 TFLite vs fp32: within 0.15 on every image (measured worst 0.060; its
  PT2E quantizer uses symmetric int8 weights and a histogram observer) and
  0.03 on average (measured 0.015).
* INT8 AUC within 0.01 of fp32 (measured 0.004 ONNX, 0.006 TFLite): on the
  cross-validation folds' own held-out women (recorded at build time) and,
  live, on the real images here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.evaluation import roc_auc
from models.network import ScreeningNet
from models.runtime import Screener, is_available, stack_input
from models.training import pair_indices


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


@pytest.fixture(scope="module")
def parity_images(request):
    """Real preprocessed images when ../shared/data exists, else synthetic."""
    try:
        imgs, _, recs = request.getfixturevalue("mias_preprocessed")
        return imgs, recs, imgs[pair_indices([r.woman for r in recs])]
    except pytest.skip.Exception:
        from models.preprocess import preprocess
        from models.synthetic import generate

        imgs = [preprocess(generate(i, "ABCD"[i % 4], [None, "mass", "calcification"][i % 3]).image).image
                for i in range(12)]
        return np.stack(imgs), None, np.stack(imgs[1:] + imgs[:1])


@pytest.fixture(scope="module")
def torch_model(release_dir):
    return ScreeningNet.from_state_dict(torch.load(release_dir / "model_fp32.pt", map_location="cpu"))


@pytest.fixture(scope="module")
def outputs(release_dir, parity_images, torch_model):
    """Logits of every backend on the same images, computed once."""
    imgs, _, others = parity_images
    out = {}
    torch.set_num_threads(1)
    with torch.inference_mode():
        s, m = zip(*[torch_model(torch.from_numpy(stack_input(x, o, torch_model.in_ch)))
                     for x, o in zip(imgs, others, strict=False)], strict=False)
    out["torch"] = (np.concatenate([a.numpy() for a in s]), np.concatenate([a.numpy() for a in m]))
    for b in ("onnx-fp32", "onnx-int8", "tflite-int8"):
        if not is_available(b):
            continue
        run = Screener(release_dir, backend=b, threads=1).raw
        s, m = zip(*[run(x, o) for x, o in zip(imgs, others, strict=False)], strict=False)
        out[b] = (np.stack(s), np.stack(m))
    return out


def test_onnx_fp32_matches_pytorch(outputs):
    np.testing.assert_allclose(outputs["onnx-fp32"][0], outputs["torch"][0], atol=1e-3)
    np.testing.assert_allclose(outputs["onnx-fp32"][1], outputs["torch"][1], atol=1e-3)


@pytest.mark.parametrize("backend,worst", [("onnx-int8", 0.10), ("tflite-int8", 0.15)])
def test_int8_probabilities_close_to_fp32(outputs, backend, worst):
    if backend not in outputs:
        pytest.skip(f"{backend} runtime not installed")
    fp = _sigmoid(outputs["onnx-fp32"][0][:, 0])
    q = _sigmoid(outputs[backend][0][:, 0])
    diff = np.abs(fp - q)
    assert diff.max() < worst, f"worst image differs by {diff.max():.3f}"
    assert diff.mean() < 0.03, f"mean difference {diff.mean():.3f}"


@pytest.mark.parametrize("backend", ["onnx-int8", "tflite-int8"])
def test_int8_auc_within_0_01_of_fp32_on_real_images(outputs, parity_images, backend):
    _, recs, _ = parity_images
    if recs is None:
        pytest.skip("AUC parity needs the real images (../shared/data/mias)")
    if backend not in outputs:
        pytest.skip(f"{backend} runtime not installed")
    y = [r.abnormal for r in recs]
    a_fp = roc_auc(y, outputs["onnx-fp32"][0][:, 0])
    a_q = roc_auc(y, outputs[backend][0][:, 0])
    assert abs(a_fp - a_q) <= 0.01, (a_fp, a_q)


def test_int8_auc_within_0_01_of_fp32_across_cv_folds(release_dir):
    """Recorded at build: each fold's model, fp32 vs INT8 ONNX, on its held-out women."""
    qc = json.loads((release_dir / "model.json").read_text())["quantization_check"]
    assert abs(qc["auc_abnormal_fp32"] - qc["auc_abnormal_int8"]) <= 0.01
    assert abs(qc["auc_malignant_fp32"] - qc["auc_malignant_int8"]) <= 0.01
