"""The coordinator's releases: each round's new global model, built from the base and the clinics' mean delta, and signed.

A federated release is the previous global model with the decrypted weighted
mean of the round's updates added to its trainable part, built by
``models.derive`` (the same builder a box uses for its own gate-approved
adaptation): fp32 weights, fp32 and INT8 ONNX calibrated on synthetic
mammograms (the coordinator holds no patient image), a fresh self-test,
``model.json["federated"]`` saying what round made it, and the manifest.
The coordinator signs it with the federation's model-signing key
(``manifest.sig``, what ``edge_agent.inference.activation`` verifies).

No TFLite file (see ``models.derive``): a box whose hardware profile runs
TFLite refuses such a release at its self-test and keeps its model; it says
so in its answer.

Versions: generation 0 is the base release (e.g. ``0.1.0``); round ``n``
publishes ``<base>+fl.<n>``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import SyncError
from sync.update import TrainableSpec


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
    from models.derive import load_state

    return load_state(release_dir)


def build(base_dir: Path, mean_delta: np.ndarray, version: str, out_dir: Path, round_info: dict[str, Any]) -> Path:
    """Write the new release folder (unsigned) at ``out_dir / version`` (``models.derive``: atomic, ONNX fp32 and INT8, self-test)."""
    from models.derive import build_derived
    from models.errors import ReleaseError

    try:
        return build_derived(base_dir, mean_delta, version, out_dir, provenance_key="federated", provenance=dict(round_info),
                             card_header=_card_header(version, base_dir.name, round_info))
    except ReleaseError as exc:
        raise SyncError(f"No release built from round {round_info.get('round_id')}: {exc} "
                        "(the strategy checks each update's spec digest; a wrapped CKKS sum shows as NaN or infinity).") from exc


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
