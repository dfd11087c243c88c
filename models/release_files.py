"""A shipped model release: its files, manifest and operating points.

``models/release/<version>/`` holds::

    model_fp32.pt      PyTorch weights (development, Grad-CAM, benchmarks)
    model_fp32.onnx    fp32 ONNX
    model_int8.onnx    static INT8 ONNX (what the box runs by default)
    model_int8.tflite  INT8 TFLite (ai-edge-litert)
    model.json         input size, output layout, triage thresholds, CV summary
    MODEL_CARD.md      for people
    manifest.json      SHA-256 and size of every file above

The box refuses a release whose files do not match the manifest: a model that
was altered or half-copied must not score patients.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from models.errors import ReleaseError

__all__ = [
    "OperatingPoints",
    "Release",
    "sha256_file",
    "write_manifest",
    "verify_manifest",
    "load_release",
    "default_release_dir",
    "triage",
    "suspicion",
    "TRIAGE_LEVELS",
    "CONTRALATERAL_BETA",
]

MODEL_FILES = ("model_fp32.pt", "model_fp32.onnx", "model_int8.onnx", "model_int8.tflite")
TRIAGE_LEVELS = ("no_suspicious_finding", "radiologist_review", "priority_radiologist_review")

#: Weight of the other breast in the suspicion score. Chosen as the midpoint of
#: {0, 0.5, 1} looked at on the CV predictions (all three are in the card).
CONTRALATERAL_BETA = 0.5


@dataclass(frozen=True)
class OperatingPoints:
    """Thresholds on the suspicion score (see :func:`suspicion` and MODEL_CARD.md)."""

    review: float
    priority: float
    beta: float = CONTRALATERAL_BETA
    fallback_p_other: float | None = None


@dataclass(frozen=True)
class Release:
    """A verified release folder, as the inference worker sees it."""

    version: str
    path: Path
    input_size: int
    operating_points: OperatingPoints
    info: dict

    def file(self, name: str) -> Path:
        p = self.path / name
        if not p.exists():
            raise ReleaseError(f"{p} is missing; reinstall release {self.version} from its package")
        return p


def suspicion(p_abnormal: float, p_other: float | None, beta: float, fallback: float | None) -> float:
    """Contralateral suspicion score: this breast's probability minus ``beta``
    times the other breast's.

    A woman's two breasts look alike; a finding usually makes ONE of them
    differ. Subtracting part of the other breast's score removes what the two
    share (dense tissue, film quality) -- it raised the CV AUC from ~0.61 to
    ~0.64. Without the other breast, ``fallback`` (the CV median probability)
    stands in for it; ``None`` there means "use this breast's own score", i.e.
    no adjustment information.
    """
    if p_other is None:
        p_other = p_abnormal if fallback is None else fallback
    return float(p_abnormal - beta * p_other)


def triage(score: float, points: OperatingPoints) -> str:
    """Map a suspicion score to the three triage levels the kiosk shows."""
    if score >= points.priority:
        return TRIAGE_LEVELS[2]
    if score >= points.review:
        return TRIAGE_LEVELS[1]
    return TRIAGE_LEVELS[0]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, version: str) -> Path:
    """Hash every file in ``folder`` into manifest.json, except the manifest and its signature
    (``manifest.sig`` signs the manifest, so it cannot be listed in it; a rewritten manifest
    needs a new signature from the coordinator, see ``edge_agent.inference.activation``)."""
    folder = Path(folder)
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in ("manifest.json", "manifest.sig")
    }
    out = folder / "manifest.json"
    out.write_text(json.dumps({"version": version, "files": files}, indent=2, sort_keys=True) + "\n")
    return out


def verify_manifest(folder: Path) -> dict:
    """Check every listed file's SHA-256; raise :class:`ReleaseError` on any mismatch."""
    folder = Path(folder)
    mpath = folder / "manifest.json"
    if not mpath.exists():
        raise ReleaseError(f"{mpath} not found: {folder} is not a model release folder")
    manifest = json.loads(mpath.read_text())
    for name, meta in manifest["files"].items():
        p = folder / name
        if not p.exists():
            raise ReleaseError(f"{p} listed in the manifest is missing; reinstall the release")
        if sha256_file(p) != meta["sha256"]:
            raise ReleaseError(
                f"{p} does not match its SHA-256 in manifest.json (altered or corrupted); "
                "reinstall the release rather than running it"
            )
    return manifest


def default_release_dir() -> Path:
    """The newest SIGNED version folder under ``models/release`` (one with ``manifest.sig``; the signature itself is
    checked where a box activates it).  A release still being built or evaluated is unsigned, so it never becomes
    the default by merely appearing; in a checkout with no signed release at all, the newest one."""
    root = Path(__file__).resolve().parent / "release"
    versions = sorted(
        (p for p in root.iterdir() if p.is_dir() and (p / "manifest.json").exists()),
        key=lambda p: tuple(int(x) if x.isdigit() else 0 for x in p.name.split(".")),
    ) if root.exists() else []
    if not versions:
        raise ReleaseError(f"no release under {root}; build one with `python -m models.release_build`")
    signed = [p for p in versions if (p / "manifest.sig").exists()]
    return (signed or versions)[-1]


def load_release(folder: Path | str | None = None, verify: bool = True) -> Release:
    """Load (and by default verify) a release folder."""
    folder = Path(folder) if folder is not None else default_release_dir()
    manifest = verify_manifest(folder) if verify else {}
    info_path = folder / "model.json"
    if not info_path.exists():
        raise ReleaseError(f"{info_path} not found; the release is incomplete, rebuild it")
    info = json.loads(info_path.read_text())
    op = info["operating_points"]
    return Release(
        version=info.get("version", manifest.get("version", folder.name)),
        path=folder,
        input_size=int(info["input_size"]),
        operating_points=OperatingPoints(float(op["review"]), float(op["priority"]),
                                         float(op.get("beta", 0.0)), op.get("fallback_p_other")),
        info=info,
    )
