"""Which studies local training learns from, and their images, decrypted in memory only.

A training example is a study a RADIOLOGIST assessed: a BI-RADS category
from a radiologist's kiosk account or typed in from the radiologist's report
(``kiosk_feedback`` rows with ``category_source`` radiologist or
radiology_report), or a report in ``kiosk_radiology_reports`` where the kiosk
keeps them, and a biopsy result wherever one is known (it overrides the
category). BI-RADS 1-2 is negative, 4-6 positive; 0 (incomplete) and 3
(probably benign, short follow-up) are not labels. The family doctor's
agreement with the AI is never a label: learning from it would teach the
model its own opinion back.

The woman is the unit: studies are held back for the evaluation gate by
pseudonym (all of a woman's studies on one side), with a stable hash, so a
woman held back once is never trained on later.

Images come from the encrypted store and go through the very decode and
preprocessing path inference uses (``edge_agent.inference.decode``,
``models.preprocess``); nothing is written to disk.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import sqlite_utils

from edge_agent.errors import IntegrityError, MammoError, StoreError
from edge_agent.ingest.image_store import ImageStore

log = logging.getLogger(__name__)

RADIOLOGIST_SOURCES = ("radiologist", "radiology_report")


@dataclass(frozen=True)
class Assessment:
    """One radiologist's (or report's) word on a study, as read from the kiosk tables."""

    study_uid: str
    birads: int | None
    biopsy: str | None  # malignant | benign | None
    at: float


@dataclass(frozen=True)
class Example:
    """A labelled study: 1 = abnormal (BI-RADS 4-6 or malignant biopsy), 0 = normal/benign."""

    study_uid: str
    woman: str  # the de-identified pseudonym
    label: int
    labelled_at: float


def label_of(birads: int | None, biopsy: str | None) -> int | None:
    """The training label of one assessment, or None when it is no label (BI-RADS 0 or 3, nothing known)."""
    if biopsy == "malignant":
        return 1
    if biopsy == "benign":
        return 0
    if birads in (1, 2):
        return 0
    if birads in (4, 5, 6):
        return 1
    return None


def choose_label(assessments: Iterable[Assessment]) -> tuple[int, float] | None:
    """(label, time) of a study from all its assessments: the latest biopsy result if any, else the latest usable BI-RADS."""
    rows = sorted(assessments, key=lambda a: a.at)
    biopsies = [a for a in rows if a.biopsy in ("malignant", "benign")]
    for a in reversed(biopsies or rows):
        label = label_of(a.birads, a.biopsy)
        if label is not None:
            return label, a.at
    return None


def held_back(woman: str, fraction: float) -> bool:
    """Whether a woman belongs to the held-back part (stable: a hash of her pseudonym, not a random draw)."""
    h = int.from_bytes(hashlib.sha256(b"mammo-holdout:" + woman.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def _table_exists(db: sqlite_utils.Database, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name]).fetchone() is not None


def assessments(db: sqlite_utils.Database) -> list[Assessment]:
    """Every radiologist assessment in the box (never a family doctor's agreement)."""
    out = [Assessment(r[0], r[1], None, r[2]) for r in db.execute(
        "SELECT study_uid, birads, created_at FROM kiosk_feedback WHERE birads IS NOT NULL AND category_source IN (?, ?)",
        list(RADIOLOGIST_SOURCES)).fetchall()] if _table_exists(db, "kiosk_feedback") else []
    if _table_exists(db, "kiosk_radiology_reports"):
        out += [Assessment(r[0], r[1], r[2], r[3]) for r in db.execute(
            "SELECT study_uid, birads, biopsy_result, created_at FROM kiosk_radiology_reports WHERE source IN (?, ?)",
            list(RADIOLOGIST_SOURCES)).fetchall()]
    return out


def examples(db: sqlite_utils.Database) -> list[Example]:
    """Labelled MG studies with stored images, oldest label first."""
    by_study: dict[str, list[Assessment]] = {}
    for a in assessments(db):
        by_study.setdefault(a.study_uid, []).append(a)
    women = dict(db.execute(
        "SELECT s.study_uid, s.pseudonym FROM ingest_studies s WHERE s.modality = 'MG'"
        " AND EXISTS (SELECT 1 FROM ingest_instances i WHERE i.study_uid = s.study_uid AND i.modality = 'MG')").fetchall())
    out = []
    for uid, rows in by_study.items():
        chosen = choose_label(rows)
        if chosen is not None and uid in women:
            out.append(Example(uid, str(women[uid]), chosen[0], chosen[1]))
    return sorted(out, key=lambda e: (e.labelled_at, e.study_uid))


def split(items: Sequence[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """(training, held back), by woman."""
    train = [e for e in items if not held_back(e.woman, fraction)]
    hold = [e for e in items if held_back(e.woman, fraction)]
    return train, hold


@dataclass(frozen=True)
class StudyImages:
    """One study's preprocessed views, in arrival order: images (n, S, S) float32 and their (laterality, view)."""

    study_uid: str
    images: np.ndarray
    views: tuple[tuple[str, str], ...]


def study_images(db: sqlite_utils.Database, store: ImageStore, study_uid: str, size: int) -> StudyImages | None:
    """Decrypt, decode and preprocess a study's MG views in memory (inference's own path); None without a usable view."""
    from edge_agent.inference.decode import work_image
    from models.preprocess import preprocess

    rows = db.execute("SELECT sop_uid, digest, laterality, view FROM ingest_instances WHERE study_uid = ? AND modality = 'MG'"
                      " ORDER BY received_at, sop_uid", [study_uid]).fetchall()
    images, views = [], []
    for sop_uid, digest, laterality, view in rows:
        try:
            data = store.get(digest)
            images.append(preprocess(work_image(data, size), size).image)
            views.append((str(laterality or "?"), str(view or "?")))
            del data
        except (IntegrityError, StoreError, MammoError, ValueError, TypeError, AttributeError, KeyError, NotImplementedError,
                RuntimeError) as exc:  # as inference: a view that cannot be read is left out, with its reason
            log.warning("training skips view %s… of study %s…: %s", str(sop_uid)[:12], study_uid[:12], exc)
    if not images:
        return None
    return StudyImages(study_uid, np.stack(images).astype(np.float32), tuple(views))


def load_studies(db: sqlite_utils.Database, store: ImageStore, uids: Sequence[str], size: int,
                 should_stop: Callable[[], bool] = lambda: False) -> list[StudyImages] | None:
    """Every study's images (studies with none left out), or None when ``should_stop`` said stop between studies."""
    out = []
    for uid in uids:
        if should_stop():
            return None
        got = study_images(db, store, uid, size)
        if got is not None:
            out.append(got)
    return out
