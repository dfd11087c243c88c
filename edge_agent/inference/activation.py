"""Which model the box screens with: verified releases, atomic activation, rollback.

A release is a folder (``models/release/<version>`` shipped with the box, or
``$MAMMO_HOME/models/<version>`` received from the coordinator) with a
``manifest.json`` of SHA-256s and, once provisioning exists, a
``manifest.sig`` by the coordinator's model-signing key.  Activation
verifies the files and the signature, runs the release's bundled self-test
on this box's runtime, and only then appends a row to
``model_activations``: one INSERT, so it is atomic, and workers pick the
new model up at their next study (a study in flight finishes on the old one).
Anything that fails leaves the previous model active.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import sqlite_utils

from edge_agent import audit
from edge_agent.errors import ModelError
from edge_agent.settings import Settings
from edge_agent.store import transaction
from models.errors import ReleaseError
from models.release_files import Release, load_release
from provisioning.keystore import verify

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "models" / "release"
SELFTEST_FILE = "selftest.npz"


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: Path
    source: str  # shipped | installed
    active: bool


@dataclass(frozen=True)
class Activation:
    id: int
    version: str
    path: Path
    manifest_sha256: str
    activated_at: float
    activated_by: str
    reason: str
    selftest: dict[str, Any]


def _sort_key(p: Path) -> tuple[int, ...]:
    return tuple(int(x) if x.isdigit() else 0 for x in p.name.split("."))


def verify_release(path: Path, signing_key: Path | None) -> tuple[Release, str]:
    """Load a release after checking every file's SHA-256 and, when a signing key is provisioned, its signature."""
    try:
        release = load_release(path, verify=True)
    except ReleaseError as exc:
        raise ModelError(f"Model release {path} refused: {exc}") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"Model release {path} is unreadable ({exc}); reinstall it.") from exc
    manifest_bytes = (path / "manifest.json").read_bytes()
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    if signing_key is not None:
        sig_path = path / "manifest.sig"
        if not sig_path.exists():
            raise ModelError(f"Model release {release.version} is not signed (no manifest.sig) and this box requires a signature. Ask the coordinator for the signed release.")
        try:
            signature = base64.b64decode(sig_path.read_text().strip())
        except ValueError:
            signature = b""
        if not verify(Path(signing_key).read_bytes(), signature, manifest_bytes):
            raise ModelError(f"Model release {release.version}: manifest.sig does not verify with the coordinator's model-signing key. The release was altered or is not from the coordinator; it was not activated.")
    return release, digest


def build_selftest(release_dir: Path, n_images: int = 4, size: int = 256) -> Path:
    """Write the release's self-test: synthetic mammograms and the fp32 ONNX model's answers on them.

    Run at release build time, where the fp32 export is the trusted
    reference; the box later checks its own runtime against these answers.
    """
    from models.release_files import write_manifest
    from models.runtime import Screener
    from models.synthetic import generate

    release = load_release(release_dir, verify=False)
    findings = [None, "mass", "calcification", "spiculated"]
    images = np.stack([np.asarray(generate(1000 + i, "ABCD"[i % 4], findings[i % 4], size=size).image, np.uint8) for i in range(n_images)])
    ref = Screener(release, backend="onnx-fp32", threads=1)
    results = [ref.score(img) for img in images]
    path = Path(release_dir) / SELFTEST_FILE
    np.savez_compressed(path, images=images, expected_p_abnormal=np.array([r.p_abnormal for r in results]),
                        expected_p_malignant=np.array([r.p_malignant for r in results]))
    write_manifest(Path(release_dir), release.version)
    return path


def run_selftest(release: Release, backend: str, threads: int, tolerance: float) -> dict[str, Any]:
    """Run the release's bundled reference images through this box's runtime; compare with the shipped answers."""
    from models.runtime import Screener

    path = release.path / SELFTEST_FILE
    if not path.exists():
        raise ModelError(f"Model release {release.version} has no {SELFTEST_FILE}; a release without a self-test is not activated.")
    with np.load(path) as ref:
        images, exp_a, exp_m = ref["images"], ref["expected_p_abnormal"], ref["expected_p_malignant"]
    screener = Screener(release, backend=backend, threads=threads)
    diffs = []
    for img, ea, em in zip(images, exp_a, exp_m, strict=True):
        r = screener.score(img)
        if not (np.isfinite(r.p_abnormal) and np.isfinite(r.p_malignant) and np.all(np.isfinite(r.heatmap))):
            raise ModelError(f"Self-test of {release.version} on {backend}: the model produced NaN/inf. Activation refused.")
        diffs.append(max(abs(r.p_abnormal - ea), abs(r.p_malignant - em)))
    diff = float(max(diffs))
    result = {"backend": backend, "images": int(len(images)), "max_prob_diff": round(diff, 5), "tolerance": tolerance, "passed": diff <= tolerance}
    if not result["passed"]:
        raise ModelError(f"Self-test of {release.version} on {backend} failed: outputs differ from the reference by {diff:.3f} (> {tolerance}). Activation refused; the previous model stays active.")
    return result


class ModelRegistry:
    def __init__(self, db: sqlite_utils.Database, settings: Settings, shipped_dir: Path = SHIPPED_DIR) -> None:
        self.db = db
        self.settings = settings
        self.shipped_dir = shipped_dir

    def releases(self) -> list[ModelVersion]:
        active = self.active()
        out = []
        for source, root in (("shipped", self.shipped_dir), ("installed", self.settings.models_dir)):
            if not root.is_dir():
                continue
            for p in sorted((p for p in root.iterdir() if (p / "manifest.json").exists()), key=_sort_key):
                out.append(ModelVersion(p.name, p, source, active is not None and active.path == p))
        return out

    def find(self, version_or_path: str) -> Path:
        p = Path(version_or_path)
        if p.is_dir():
            return p.resolve()
        for r in reversed(self.releases()):
            if r.version == version_or_path:
                return r.path
        raise ModelError(f"No model release {version_or_path!r}. Fix: pick one from `mammo model list`.")

    def history(self) -> list[Activation]:
        rows = self.db.execute(
            "SELECT id, version, path, manifest_sha256, activated_at, activated_by, reason, selftest FROM model_activations ORDER BY id"
        ).fetchall()
        return [Activation(r[0], r[1], Path(r[2]), r[3], r[4], r[5], r[6], json.loads(r[7])) for r in rows]

    def active(self) -> Activation | None:
        h = self.history()
        return h[-1] if h else None

    def activate(self, version_or_path: str, *, by: str, reason: str, backend: str = "onnx-int8", threads: int = 1) -> Activation:
        path = self.find(version_or_path)
        release, digest = verify_release(path, self.settings.infer_model_signing_key)
        selftest = run_selftest(release, backend, threads, self.settings.infer_selftest_tolerance)
        now = time.time()
        with transaction(self.db) as db:
            cur = db.execute(
                "INSERT INTO model_activations (version, path, manifest_sha256, activated_at, activated_by, reason, selftest) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [release.version, str(path), digest, now, by, reason, json.dumps(selftest)],
            )
            audit.append(db, by, "model_activate", release.version, {"reason": reason, "manifest_sha256": digest, "path": str(path)}, at=now)
        log.info("model %s activated by %s (%s)", release.version, by, reason)
        return Activation(cast(int, cur.lastrowid), release.version, path, digest, now, by, reason, selftest)

    def rollback(self, *, by: str, backend: str = "onnx-int8", threads: int = 1) -> Activation:
        """Re-activate the model that was active before the current one."""
        h = self.history()
        if len(h) < 2:
            raise ModelError("There is no earlier model to roll back to.")
        current = h[-1]
        for previous in reversed(h[:-1]):
            if previous.path != current.path:
                return self.activate(str(previous.path), by=by, reason=f"rollback from {current.version}", backend=backend, threads=threads)
        raise ModelError("Every earlier activation is the current model; nothing to roll back to.")

    def ensure_active(self, *, backend: str = "onnx-int8", threads: int = 1) -> Activation:
        """On first start, activate the newest shipped release."""
        current = self.active()
        if current is not None:
            return current
        shipped = [r for r in self.releases() if r.source == "shipped"]
        if not shipped:
            raise ModelError(f"No model release is shipped under {self.shipped_dir}; the box cannot screen. Reinstall the box software.")
        return self.activate(str(shipped[-1].path), by="system", reason="first start", backend=backend, threads=threads)
