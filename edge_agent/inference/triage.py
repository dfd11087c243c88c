"""Study-level triage: pure functions from per-view scores to a category.

Each view's triage score is the model card's suspicion score (its
probability against the same view of the other breast).  A breast is as
suspicious as its most suspicious view, and a study as its most suspicious
breast: one missed finding in one view is what screening
cannot afford, so scores are not averaged away.  The thresholds come from
the model card's operating points.  Wording is a triage aid, never a
diagnosis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from models.release_files import TRIAGE_LEVELS, OperatingPoints, triage

SCREENING_VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
NO_SUSPICIOUS, REVIEW, PRIORITY = TRIAGE_LEVELS


@dataclass(frozen=True)
class ViewScore:
    sop_uid: str
    laterality: str
    view: str
    p_abnormal: float
    p_malignant: float
    suspicion: float  # the triage score: this breast against the other (models.release_files.suspicion)
    peak_x: int
    peak_y: int
    heatmap_digest: str


@dataclass(frozen=True)
class StudyTriage:
    status: str  # done | incomplete
    triage: str | None
    study_score: float | None
    breast_scores: dict[str, dict[str, float]]
    reasons: tuple[str, ...]


def missing_views(present: Iterable[tuple[str, str]]) -> list[str]:
    have = set(present)
    return [f"{lat}-{view}" for lat, view in SCREENING_VIEWS if (lat, view) not in have]


def aggregate(views: list[ViewScore], unreadable: list[str], points: OperatingPoints) -> StudyTriage:
    """Per-breast maxima, the study maximum and its category; incomplete if a screening view is missing."""
    breasts: dict[str, dict[str, float]] = {}
    for v in views:
        b = breasts.setdefault(v.laterality, {"p_abnormal": 0.0, "p_malignant": 0.0, "suspicion": -1.0})
        b["p_abnormal"] = max(b["p_abnormal"], v.p_abnormal)
        b["p_malignant"] = max(b["p_malignant"], v.p_malignant)
        b["suspicion"] = max(b["suspicion"], v.suspicion)
    reasons = [f"view {name} missing" for name in missing_views((v.laterality, v.view) for v in views)]
    reasons += [f"unreadable: {u}" for u in unreadable]
    if reasons:
        return StudyTriage("incomplete", None, None, breasts, tuple(reasons))
    score = max(b["suspicion"] for b in breasts.values())
    return StudyTriage("done", triage(score, points), score, breasts, ())
