"""A release derived from another: the same network with a new trainable part, built and checked like a shipped one.

Two makers derive releases, and both go through here so that a derived
release is built one way:

- the federation's coordinator, from the previous global model plus the
  decrypted mean of the clinics' updates (``sync.coordinator.releases``);
- a box whose local adaptation passed its evaluation gate, from the
  release it trained on plus its own round's change
  (``edge_agent.learning.serve``).

Only the trainable part (``models.trainable``: the ``fuse`` block and the
head) changes; everything else is the base's weights bit for bit.  The
folder holds fp32 PyTorch weights, fp32 ONNX, static INT8 ONNX calibrated on
the self-test's synthetic mammograms (no patient image is needed or used), a
fresh self-test with the new model's answers, ``model.json`` with a
provenance entry saying what made it, a model card, and the manifest of
SHA-256s.  It is unsigned: each maker signs with its own key.

No TFLite file: the LiteRT converter needs its own virtual environment
(STACK-NOTES, TFLite conversion), which neither maker carries.  A box whose
hardware profile runs TFLite refuses such a release at its self-test and
keeps its model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ReleaseError

DERIVED_FILES = ("model_fp32.pt", "model_fp32.onnx", "model_int8.onnx", "model.json", "MODEL_CARD.md", "selftest.npz")
CALIBRATION_IMAGES = 16
NO_TFLITE = "TFLite conversion needs its own virtual environment; derived releases carry ONNX only"


def load_state(release_dir: Path) -> tuple[Any, Any]:
    """(fp32 state dict, trainable spec) of ``release_dir``'s network."""
    import torch

    from models.network import model_from_state_dict
    from models.trainable import spec_of

    try:
        state = torch.load(release_dir / "model_fp32.pt", map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ReleaseError(f"{release_dir} has no usable model_fp32.pt ({exc}); a release can be derived only from one with fp32 weights.") from exc
    return state, spec_of(model_from_state_dict(state))


def calibration(size: int) -> np.ndarray:
    """(N, 1, S, S) preprocessed synthetic mammograms (models.synthetic): real enough to set INT8 ranges, no patient in them."""
    from models.preprocess import preprocess
    from models.synthetic import generate

    findings = [None, "mass", "calcification", "spiculated"]
    out = [preprocess(np.asarray(generate(5000 + i, "ABCD"[i % 4], findings[i % 4], size=512).image, np.uint8), size).image
           for i in range(CALIBRATION_IMAGES)]
    return np.stack(out)[:, None].astype(np.float32)


def check_delta(delta: np.ndarray, size: int, base_name: str) -> np.ndarray:
    """``delta`` as a finite float32 vector of the trainable part's size; ReleaseError saying what is wrong otherwise."""
    out = np.asarray(delta, dtype=np.float32)
    if out.ndim != 1 or out.size != size:
        raise ReleaseError(f"The change has {out.size} values; the trainable part of {base_name} has {size}. "
                           "Fix: derive only from updates made on this model.")
    if not np.all(np.isfinite(out)):
        raise ReleaseError("The change holds NaN or infinity; no release is derived from it.")
    return out


def build_derived(base_dir: Path, delta: np.ndarray, version: str, out_dir: Path, *, provenance_key: str, provenance: dict[str, Any],
                  card_header: str) -> Path:
    """Write the derived release folder (unsigned) at ``out_dir / version``; atomic: a crash leaves no half folder under that name.

    ``provenance`` is stored as ``model.json[provenance_key]`` (with the base
    version, the change's L2 norm and the no-TFLite note added); ``card_header``
    goes above the base's model card.
    """
    import torch

    from models.export.onnx_export import export_onnx
    from models.export.quantize import quantize_int8
    from models.network import model_from_state_dict
    from models.selftest import build_selftest
    from models.trainable import apply_delta

    torch.set_num_threads(1)
    state, spec = load_state(base_dir)
    change = check_delta(delta, spec.size, base_dir.name)
    info = json.loads((base_dir / "model.json").read_text(encoding="utf-8"))
    base_version = str(info.get("version", base_dir.name))
    size = int(info["input_size"])
    new_state = apply_delta(state, spec, change)
    model = model_from_state_dict(new_state)
    final = out_dir / version
    staging = out_dir / f".building-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o700)
    try:
        torch.save(new_state, staging / "model_fp32.pt")
        export_onnx(model, staging / "model_fp32.onnx", size)
        quantize_int8(staging / "model_fp32.onnx", staging / "model_int8.onnx", calibration(size))
        info["version"] = version
        info[provenance_key] = {"base_version": base_version, **provenance, "version": version, "delta_l2": float(np.linalg.norm(change)),
                                "no_tflite": NO_TFLITE}
        (staging / "model.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        card = (base_dir / "MODEL_CARD.md").read_text(encoding="utf-8") if (base_dir / "MODEL_CARD.md").exists() else ""
        (staging / "MODEL_CARD.md").write_text(card_header + card, encoding="utf-8")
        build_selftest(staging)  # also writes manifest.json with the version from model.json
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final
