"""What the doctor is told about the model behind a result: its thresholds and its measured woman-level performance.

Read from the release's ``model.json`` (display only: the inference worker
verified the release before it scored anything). The block ``woman_level``
holds figures measured per woman, through the box's own study-level
aggregation, at the shipped operating points. A release without that block
has no measurement the kiosk may quote, so it says "no performance
measurement" and treats the model as experimental: a model is only shown as
established when its own card says it is no longer experimental.

The heatmap rule lives here too, because it depends on the same thresholds:
a view's heatmap is drawn only when that view's suspicion score reaches the
review threshold. Below it the model suggests nothing about the view, and a
warm blob on every image (the map is normalised per view, so it always has a
hottest spot) would read as a finding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kiosk_ui.i18n import Catalog, decimal, percent
from kiosk_ui.records import StudyView


@dataclass(frozen=True)
class WomanLevel:
    """Woman-level figures from the release card (fractions in 0-1)."""

    n_women: int
    n_abnormal: int
    auc: float
    auc_ci95: tuple[float, float] | None
    sensitivity_review: float
    specificity_review: float
    sensitivity_priority: float
    specificity_priority: float
    data: str
    experimental: bool
    triage_counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    version: str | None
    review: float | None = None  # thresholds on the suspicion score
    priority: float | None = None
    woman_level: WomanLevel | None = None

    @property
    def experimental(self) -> bool:
        return self.woman_level is None or self.woman_level.experimental

    def heatmap_shown(self, score: float | None) -> bool:
        """Draw a view's heatmap only when its score reaches the review threshold (unknown threshold: never)."""
        return self.review is not None and score is not None and score >= self.review


def _data_text(data: Any, lang: str) -> str:
    if isinstance(data, str):
        return data.strip()
    if isinstance(data, Mapping):
        for key in (lang, "tr", "en", "name", "description"):
            if isinstance(data.get(key), str) and data[key].strip():
                return data[key].strip()
    return ""


def parse(version: str | None, info: Mapping[str, Any] | None, lang: str = "tr") -> ModelInfo:
    """A ModelInfo from a release's model.json; anything missing or malformed is left out rather than guessed."""
    if not info:
        return ModelInfo(version)
    op = info.get("operating_points") or {}
    try:
        review, priority = float(op["review"]), float(op["priority"])
    except (KeyError, TypeError, ValueError):
        review = priority = None
    wl = info.get("woman_level")
    woman = None
    if isinstance(wl, Mapping):
        try:
            ci = wl.get("auc_ci95")
            woman = WomanLevel(
                n_women=int(wl["n_women"]), n_abnormal=int(wl["n_abnormal"]), auc=float(wl["auc"]),
                auc_ci95=(float(ci[0]), float(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else None,
                sensitivity_review=float(wl["sensitivity_review"]), specificity_review=float(wl["specificity_review"]),
                sensitivity_priority=float(wl["sensitivity_priority"]), specificity_priority=float(wl["specificity_priority"]),
                data=_data_text(wl.get("data"), lang), experimental=bool(wl.get("experimental", True)),
                triage_counts={str(k): int(v) for k, v in (wl.get("triage_counts") or {}).items() if isinstance(v, (int, float))},
            )
        except (KeyError, TypeError, ValueError, IndexError):
            woman = None
    return ModelInfo(version, review, priority, woman)


def performance_lines(m: ModelInfo, t: Catalog) -> list[str]:
    """The plain-Turkish paragraph the study page and the referral both print, one sentence per line."""
    lang = t.lang
    w = m.woman_level
    if w is None:
        lines = [t("model.no_measurement")]
    else:
        lines = [
            t("model.measured_on", n_women=w.n_women, n_abnormal=w.n_abnormal, data=w.data or t("model.data_unknown")),
            t("model.at_review", sens=percent(w.sensitivity_review, lang), spec=percent(w.specificity_review, lang)),
            t("model.at_priority", sens=percent(w.sensitivity_priority, lang), spec=percent(w.specificity_priority, lang)),
        ]
        auc = decimal(w.auc, lang)
        lines.append(t("model.auc_ci", auc=auc, lo=decimal(w.auc_ci95[0], lang), hi=decimal(w.auc_ci95[1], lang))
                     if w.auc_ci95 else t("model.auc", auc=auc))
    lines.append(t("model.not_validated"))
    return lines


def drawn_heatmaps(study: StudyView, m: ModelInfo) -> frozenset[str]:
    """The views (SOP UIDs) whose heatmap is drawn: a result exists and the view's own score reaches the review threshold."""
    if not study.has_result:
        return frozenset()
    return frozenset(v.sop_uid for v in study.views if v.has_heatmap and m.heatmap_shown(v.suspicion))
