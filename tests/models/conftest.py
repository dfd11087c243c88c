"""Shared fixtures for the model tests.

Real data lives next to the checkout in ../shared/data (research licence, never
copied into the repo); tests that need it skip with a visible reason when it
is absent. Core tests use the synthetic generator instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MIAS = SHARED_DATA / "mias"
RELEASE_ROOT = Path(__file__).resolve().parents[2] / "models" / "release"


@pytest.fixture(scope="session")
def mias_dir() -> Path:
    if not (MIAS / "images.csv").exists():
        pytest.skip(f"real mini-MIAS data not found at {MIAS} (../shared/data next to the checkout)")
    return MIAS


@pytest.fixture(scope="session")
def release_dir() -> Path:
    from models.errors import ReleaseError
    from models.release_files import default_release_dir

    try:
        return default_release_dir()
    except ReleaseError as exc:
        pytest.skip(f"no model release built: {exc}")


@pytest.fixture(scope="session")
def mias_records(mias_dir):
    from models.data import read_folder

    return read_folder(mias_dir)


@pytest.fixture(scope="session")
def mias_preprocessed(mias_records):
    """(images (N,S,S), masks, records) for every real image, computed once."""
    from models.data import load_pixels
    from models.preprocess import preprocess

    pre = [preprocess(load_pixels(r)) for r in mias_records]
    return np.stack([p.image for p in pre]), np.stack([p.mask for p in pre]), mias_records


def write_synthetic_folder(root: Path, n_women: int = 4, size: int = 256) -> Path:
    """A tiny mini-MIAS-shaped folder of SYNTHETIC mammograms (images/ + images.csv)."""
    from PIL import Image

    from models.synthetic import generate

    (root / "images").mkdir(parents=True)
    rows = ["ref,file,tissue,label_abnormal,label_malignant,patient_pair"]
    findings = [None, "mass", "spiculated", "calcification"]
    k = 0
    for w in range(n_women):
        for lat in ("R", "L"):
            k += 1
            f = findings[(w + (lat == "L")) % 4] if w % 2 else None
            s = generate(seed=100 + k, density="ABCD"[w % 4], finding=f, size=size, laterality=lat)
            ref = f"syn{k:03d}"
            Image.fromarray(s.image).save(root / "images" / f"{ref}.png")
            rows.append(f"{ref},images/{ref}.png,{'FGD'[w % 3]},{int(s.abnormal)},{int(s.malignant)},{w + 1}")
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def synthetic_folder(tmp_path):
    """Factory: ``synthetic_folder(n_women)`` -> a mini-MIAS-shaped folder in tmp."""
    return lambda n_women=4: write_synthetic_folder(tmp_path / f"syn{n_women}", n_women=n_women)
