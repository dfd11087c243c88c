"""The coordinator's releases: each round's new global model, built from the base and the clinics' mean delta, and signed.

A federated release is the previous global model with the decrypted weighted
mean of the round's updates added to its trainable part
(``models.trainable.apply_delta``: the ``fuse`` block's convolutions and the
head).  It is built like a shipped release and checked the same way on the
box: fp32 PyTorch weights, fp32 ONNX, static INT8 ONNX calibrated on the
self-test's synthetic mammograms (the coordinator holds no patient image),
a fresh self-test with the new model's answers, ``model.json`` saying what
round made it, a manifest of SHA-256s and the federation's model-signing
signature over that manifest (``manifest.sig``, what
``edge_agent.inference.activation`` verifies).

No TFLite file: the LiteRT converter needs its own virtual environment
(STACK-NOTES, TFLite conversion), which the coordinator does not carry.  A
box whose hardware profile runs TFLite refuses such a release at its
self-test and keeps its model; it says so in its answer.

Versions: generation 0 is the base release (e.g. ``0.1.0``); round ``n``
publishes ``<base>+fl.<n>``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import SyncError
from sync.update import TrainableSpec

FEDERATED_FILES = ("model_fp32.pt", "model_fp32.onnx", "model_int8.onnx", "model.json", "MODEL_CARD.md", "selftest.npz")
CALIBRATION_IMAGES = 16


@dataclass(frozen=True)
class PublishedRelease:
    version: str
    generation: int
    path: Path
    manifest_sha256: str
    signing_key_version: int


def version_for(base_version: str, generation: int) -> str:
    root = base_version.split("+", 1)[0]
    return root if generation == 0 else f"{root}+fl.{generation}"


def trainable_spec(release_dir: Path) -> TrainableSpec:
    """The trainable part of ``release_dir``'s model as sync's envelope names it (what an update must match)."""
    part = _spec(release_dir)[1]
    return TrainableSpec(tuple(part.names), tuple(tuple(s) for s in part.shapes))


def _spec(release_dir: Path) -> tuple[Any, Any]:
    import torch

    from models.network import model_from_state_dict
    from models.trainable import spec_of

    state = torch.load(release_dir / "model_fp32.pt", map_location="cpu", weights_only=True)
    return state, spec_of(model_from_state_dict(state))


def _calibration(size: int) -> np.ndarray:
    """(N, 1, S, S) preprocessed synthetic mammograms (models.synthetic): real enough to set INT8 ranges, no patient in them."""
    from models.preprocess import preprocess
    from models.synthetic import generate

    findings = [None, "mass", "calcification", "spiculated"]
    out = [preprocess(np.asarray(generate(5000 + i, "ABCD"[i % 4], findings[i % 4], size=512).image, np.uint8), size).image
           for i in range(CALIBRATION_IMAGES)]
    return np.stack(out)[:, None].astype(np.float32)


def build(base_dir: Path, mean_delta: np.ndarray, version: str, out_dir: Path, round_info: dict[str, Any]) -> Path:
    """Write the new release folder (unsigned) at ``out_dir / version``; atomic: a crash leaves no half folder under that name."""
    import torch

    from models.export.onnx_export import export_onnx
    from models.export.quantize import quantize_int8
    from models.network import model_from_state_dict
    from models.selftest import build_selftest
    from models.trainable import apply_delta

    torch.set_num_threads(1)
    state, spec = _spec(base_dir)
    delta = np.asarray(mean_delta, dtype=np.float32)
    if delta.ndim != 1 or delta.size != spec.size:
        raise SyncError(f"The decrypted mean has {delta.size} values; the trainable part of {base_dir.name} has {spec.size}. "
                        "Fix: aggregate only updates made on this model (the strategy checks the spec digest).")
    if not np.all(np.isfinite(delta)):
        raise SyncError("The decrypted mean holds NaN or infinity (a wrapped CKKS sum?); no release is built from it.")
    info = json.loads((base_dir / "model.json").read_text(encoding="utf-8"))
    size = int(info["input_size"])
    new_state = apply_delta(state, spec, delta)
    model = model_from_state_dict(new_state)
    final = out_dir / version
    staging = out_dir / f".building-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o700)
    torch.save(new_state, staging / "model_fp32.pt")
    export_onnx(model, staging / "model_fp32.onnx", size)
    quantize_int8(staging / "model_fp32.onnx", staging / "model_int8.onnx", _calibration(size))
    info["version"] = version
    info["federated"] = round_info | {"base_version": info.get("federated", {}).get("version", base_dir.name), "delta_l2": float(np.linalg.norm(delta)),
                                      "no_tflite": "TFLite conversion needs its own virtual environment; federated releases carry ONNX only"}
    info["federated"]["version"] = version
    (staging / "model.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    card = (base_dir / "MODEL_CARD.md").read_text(encoding="utf-8") if (base_dir / "MODEL_CARD.md").exists() else ""
    (staging / "MODEL_CARD.md").write_text(_card_header(version, base_dir.name, round_info) + card, encoding="utf-8")
    build_selftest(staging)  # also writes manifest.json with the version from model.json
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def sign(folder: Path, sign_bytes: Callable[[bytes], tuple[int, bytes]]) -> tuple[str, int]:
    """Write ``manifest.sig`` with the federation's model-signing key (``Authority.sign``); (manifest SHA-256, key version)."""
    import hashlib

    manifest = (folder / "manifest.json").read_bytes()
    key_version, signature = sign_bytes(manifest)
    tmp = folder / ".manifest.sig.tmp"
    tmp.write_text(base64.b64encode(signature).decode("ascii") + "\n", encoding="ascii")
    os.replace(tmp, folder / "manifest.sig")
    return hashlib.sha256(manifest).hexdigest(), key_version


def publish(base_dir: Path, mean_delta: np.ndarray, base_version: str, generation: int, out_dir: Path, round_info: dict[str, Any],
            sign_bytes: Callable[[bytes], tuple[int, bytes]]) -> PublishedRelease:
    """Build and sign generation ``generation``'s release."""
    version = version_for(base_version, generation)
    folder = build(base_dir, mean_delta, version, out_dir, round_info | {"generation": generation})
    digest, key_version = sign(folder, sign_bytes)
    return PublishedRelease(version, generation, folder, digest, key_version)


def _card_header(version: str, base: str, round_info: dict[str, Any]) -> str:
    lines = [f"# Federated release {version}", "",
             f"Built by the federation's coordinator from {base} plus the weighted mean of "
             f"{len(round_info.get('contributions', []))} encrypted clinic update(s) (round {round_info.get('round_id')}).",
             "Only the trainable part (fuse block and head) changed; the figures below are the base release's and were not "
             "re-measured on held-out women after this round. No TFLite file: ONNX fp32 and INT8 only.", "", "---", "", ""]
    return "\n".join(lines)
