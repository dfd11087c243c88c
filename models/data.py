"""Reading a mini-MIAS-shaped folder and splitting it by woman.

A folder is ``images/`` plus ``images.csv`` (at least ``ref, file,
label_abnormal, label_malignant, patient_pair``); ``labels.csv`` with lesion
centres (``x_512, y_from_top_512, radius_512``) and ``tissue`` are optional.
The same reader serves training (on ``../shared/data/mias``) and ``mammo eval``
(on any folder of that shape, e.g. women the project has never seen).

Splitting is by woman (``patient_pair``), never by image: images 2k-1 and 2k
are the two breasts of one woman, and letting one breast train while the other
tests is the classic leak that inflates mini-MIAS results.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from models.errors import DatasetError

__all__ = ["Lesion", "Record", "read_folder", "load_pixels", "woman_folds", "shared_data_dir"]

_REQUIRED = ("ref", "file", "label_abnormal", "label_malignant", "patient_pair")


@dataclass(frozen=True)
class Lesion:
    """One finding's circle in ORIGINAL pixel units (y from the top)."""

    x: float
    y: float
    radius: float
    malignant: bool
    kind: str


@dataclass(frozen=True)
class Record:
    """One image and what is known about it."""

    ref: str
    path: Path
    abnormal: int
    malignant: int
    woman: str
    tissue: str = ""
    side: str = ""
    lesions: tuple[Lesion, ...] = field(default_factory=tuple)


def shared_data_dir() -> Path:
    """``../shared/data`` next to the checkout (where the real data lives)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _read_labels(path: Path, scale: float) -> dict[str, list[Lesion]]:
    out: dict[str, list[Lesion]] = {}
    if not path.exists():
        return out
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("radius_512"):
                continue
            out.setdefault(row["ref"], []).append(
                Lesion(
                    x=float(row["x_512"]) * scale,
                    y=float(row["y_from_top_512"]) * scale,
                    radius=float(row["radius_512"]) * scale,
                    malignant=row.get("severity", "") == "M",
                    kind=row.get("abnormality_class", ""),
                )
            )
    return out


def read_folder(root: Path | str) -> list[Record]:
    """Read ``images.csv`` (and ``labels.csv`` if present) under ``root``."""
    root = Path(root)
    index = root / "images.csv"
    if not index.exists():
        raise DatasetError(
            f"{index} not found: the folder must hold images/ and images.csv with "
            f"columns {', '.join(_REQUIRED)} (see ../shared/data/mias for the layout)"
        )
    with index.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in _REQUIRED if rows and c not in rows[0]]
    if not rows or missing:
        raise DatasetError(
            f"{index} has no rows or lacks columns {missing}; add them "
            f"(patient_pair groups the two breasts of one woman)"
        )
    # labels.csv coordinates are for 512x512 PNGs; rescale if the PNGs differ
    first = root / rows[0]["file"]
    scale = 1.0
    if first.exists():
        with Image.open(first) as im:
            scale = im.size[0] / 512.0
    lesions = _read_labels(root / "labels.csv", scale)
    records = []
    for row in rows:
        path = root / row["file"]
        if not path.exists():
            raise DatasetError(f"{path} listed in images.csv does not exist; fix the 'file' column")
        records.append(
            Record(
                ref=row["ref"],
                path=path,
                abnormal=int(row["label_abnormal"]),
                malignant=int(row["label_malignant"]),
                woman=str(row["patient_pair"]),
                tissue=row.get("tissue", "") or "",
                side=row.get("side", "") or "",
                lesions=tuple(lesions.get(row["ref"], ())),
            )
        )
    return records


def load_pixels(record: Record) -> np.ndarray:
    """The image as a 2-D array (uint8 or uint16), exactly as stored."""
    with Image.open(record.path) as im:
        if im.mode not in ("L", "I;16", "I"):
            im = im.convert("L")
        return np.asarray(im)


def _woman_stratum(records: list[Record]) -> dict[str, int]:
    """0 = no finding, 1 = benign only, 2 = malignant (worst breast)."""
    s: dict[str, int] = {}
    for r in records:
        level = 2 if r.malignant else (1 if r.abnormal else 0)
        s[r.woman] = max(s.get(r.woman, 0), level)
    return s


def woman_folds(records: list[Record], k: int = 5, seed: int = 0) -> list[int]:
    """Fold index per record. Every image of a woman gets the same fold;
    women are dealt round-robin within strata so each fold has a similar mix."""
    strata = _woman_stratum(records)
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    offset = 0
    for level in (2, 1, 0):
        women = sorted(w for w, s in strata.items() if s == level)
        rng.shuffle(women)
        for i, w in enumerate(women):
            fold_of[w] = (offset + i) % k
        offset += len(women)
    return [fold_of[r.woman] for r in records]
