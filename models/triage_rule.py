"""The study's triage rule: pure functions from per-view scores to a category.

Part of what a model release defines, beside its operating points: the
thresholds are chosen on the score computed here (``models.operating_points``)
and the box decides with the very same functions (``edge_agent.inference.triage``
re-exports them; the worker imports them from there).  So they live in
``models``, which imports nothing from the daemon.

Each view's triage score is the model card's suspicion score (its
probability against the same view of the other breast).  A breast is as
suspicious as its most suspicious view, and a study as its most suspicious
breast: one missed finding in one view is what screening
cannot afford, so scores are not averaged away.  The thresholds come from
the model card's operating points, chosen on this same study score over
the cross-validation women (:func:`study_score`), not on single images.  Wording is a triage aid, never a
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


def missing_views(present: Iterable[tuple[str, str]], required: Iterable[tuple[str, str]] = SCREENING_VIEWS) -> list[str]:
    have = set(present)
    return [f"{lat}-{view}" for lat, view in required if (lat, view) not in have]


def first_by_view(scored: Iterable[tuple[str, str, float]]) -> dict[tuple[str, str], float]:
    """``(laterality, view) -> p_abnormal`` of the first image of each view (a repeat view keeps the first)."""
    out: dict[tuple[str, str], float] = {}
    for lat, view, p in scored:
        out.setdefault((lat, view), p)
    return out


def other_breast(p_by_view: dict[tuple[str, str], float], laterality: str | None, view: str | None) -> float | None:
    """The same view of the other breast, which a view's suspicion is measured against (None when absent)."""
    other = {"L": "R", "R": "L"}.get(laterality or "")
    return None if other is None or view is None else p_by_view.get((other, view))


def breast_scores(views: Iterable[ViewScore]) -> dict[str, dict[str, float]]:
    """Per breast, the maximum over its views of each score.

    The contralateral term is already inside each view's suspicion (view
    against the SAME view of the other breast), i.e. it is applied before the
    maximum over views: a CC view is compared with a CC view, never with the
    other breast's MLO (see the model card for the measurement).
    """
    breasts: dict[str, dict[str, float]] = {}
    for v in views:
        b = breasts.setdefault(v.laterality, {"p_abnormal": 0.0, "p_malignant": 0.0, "suspicion": -1.0})
        b["p_abnormal"] = max(b["p_abnormal"], v.p_abnormal)
        b["p_malignant"] = max(b["p_malignant"], v.p_malignant)
        b["suspicion"] = max(b["suspicion"], v.suspicion)
    return breasts


def study_score(views: Iterable[ViewScore]) -> float | None:
    """The study's triage score over the views it has: its most suspicious breast (None without views).

    :func:`aggregate` uses it for a complete study; the operating points are
    chosen with it on the cross-validation women (who have the two MLO views
    only), so the thresholds are set on the very score the box compares them to.
    """
    breasts = breast_scores(views)
    return max(b["suspicion"] for b in breasts.values()) if breasts else None


def aggregate(views: list[ViewScore], unreadable: list[str], points: OperatingPoints,
              required: Iterable[tuple[str, str]] = SCREENING_VIEWS) -> StudyTriage:
    """Per-breast maxima, the study maximum and its category; incomplete if a ``required`` view is missing.

    The box requires the four screening views; evaluation on a data set with
    fewer views per woman (mini-MIAS: the two MLO) passes the views it has.
    """
    breasts = breast_scores(views)
    reasons = [f"view {name} missing" for name in missing_views(((v.laterality, v.view) for v in views), required)]
    reasons += [f"unreadable: {u}" for u in unreadable]
    score = study_score(views)
    if reasons or score is None:
        return StudyTriage("incomplete", None, None, breasts, tuple(reasons or ["no view"]))
    return StudyTriage("done", triage(score, points), score, breasts, ())
