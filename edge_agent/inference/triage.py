"""Study-level triage on the box: the release's own rule, imported, never re-coded.

The pure aggregation (per view, per breast, per study; the category from the
operating points) lives in :mod:`models.triage_rule` because a model release
defines it together with its thresholds, which ``models.operating_points``
chooses with these very functions.  This module is the box's import point: the
inference worker, the kiosk and the tests name ``edge_agent.inference.triage``.
"""

from __future__ import annotations

from models.triage_rule import (
    NO_SUSPICIOUS,
    PRIORITY,
    REVIEW,
    SCREENING_VIEWS,
    StudyTriage,
    ViewScore,
    aggregate,
    breast_scores,
    first_by_view,
    missing_views,
    other_breast,
    study_score,
)

__all__ = [
    "NO_SUSPICIOUS",
    "PRIORITY",
    "REVIEW",
    "SCREENING_VIEWS",
    "StudyTriage",
    "ViewScore",
    "aggregate",
    "breast_scores",
    "first_by_view",
    "missing_views",
    "other_breast",
    "study_score",
]
