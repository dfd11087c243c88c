"""Operating points for the unit the box decides on: the woman's study, not the image.

The box triages a STUDY on one score (:func:`models.triage_rule.study_score`, which the box runs:
each view against the same view of the other breast, then the most suspicious
view of the most suspicious breast). Thresholds chosen on single images do not
fit that score: for two breasts a and b, ``max(a - b/2, b - a/2) >= (a + b) / 4``,
so an image-level review point sends nearly every woman to review. Here the
out-of-fold CV predictions are regrouped by woman and scored by the box's own
functions (imported, never re-coded), over the views each woman has
(mini-MIAS: the two MLO views). The thresholds are chosen on those scores and
the figures the card and the kiosk show are measured the same way.

Print the figures of a release, or re-derive its operating points from its
``cv_predictions.json`` (no retraining) and rewrite model.json, the card and
the manifest::

    python -m models.operating_points models/release/0.1.0 [--write]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import ReleaseError
from models.evaluation import bootstrap_ci, roc_auc
from models.release_files import TRIAGE_LEVELS, OperatingPoints, suspicion
from models.triage_rule import ViewScore, aggregate, first_by_view, other_breast, study_score

__all__ = [
    "WomanStudy",
    "woman_studies",
    "study_scores",
    "choose_points",
    "woman_level",
    "woman_level_cis",
    "women_metrics",
    "women_of_images",
    "summarize_women",
    "rederive",
    "main",
]

#: The views a mini-MIAS woman has: one MLO per breast.
MIAS_VIEWS = (("L", "MLO"), ("R", "MLO"))
REVIEW_SENSITIVITY = 0.85  # the seed's sensitivity goal, per woman
PRIORITY_SPECIFICITY = 0.90


@dataclass(frozen=True)
class WomanStudy:
    """One woman's study as the box would score it: her views and whether any breast has a finding."""

    woman: str
    abnormal: int
    views: tuple[ViewScore, ...]

    @property
    def present(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted({(v.laterality, v.view) for v in self.views}))


def _side(row: dict, position: int) -> str:
    """Laterality of a prediction row. mini-MIAS rows carry none: odd image numbers are right breasts.
    Otherwise a woman's two unlabelled images are her two breasts in row order (the study score is
    symmetric in the breasts, so which is called left does not change it)."""
    side = row.get("laterality") or row.get("side")
    if side in ("L", "R"):
        return str(side)
    ref = str(row.get("ref", ""))
    if ref.startswith("mdb") and ref[3:].isdigit():
        return "R" if int(ref[3:]) % 2 else "L"
    if position < 2:
        return ("R", "L")[position]
    raise ReleaseError(f"image {ref or row!r}: a third image of one woman without laterality; add a 'side' column (L/R)")


def woman_studies(rows: Iterable[dict], beta: float, fallback_p_other: float | None = None) -> list[WomanStudy]:
    """Group per-image prediction rows by woman into the ViewScores the box's worker would make.

    Each view's suspicion pairs it with the same view of the other breast exactly as
    the worker does (:func:`~models.triage_rule.first_by_view`,
    :func:`~models.triage_rule.other_breast`, :func:`~models.release_files.suspicion`).
    """
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(str(r["woman"]), []).append(r)
    out = []
    for woman in sorted(by, key=lambda w: (len(w), w)):
        mine = by[woman]
        sides = [(_side(r, i), str(r.get("view") or "MLO")) for i, r in enumerate(mine)]
        p_first = first_by_view((lat, view, float(r["p_abnormal"])) for (lat, view), r in zip(sides, mine, strict=True))
        views = tuple(
            ViewScore(str(r.get("ref", "")), lat, view, float(r["p_abnormal"]), float(r.get("p_malignant", 0.0)),
                      suspicion(float(r["p_abnormal"]), other_breast(p_first, lat, view), beta, fallback_p_other),
                      0, 0, "")
            for (lat, view), r in zip(sides, mine, strict=True)
        )
        out.append(WomanStudy(woman, int(max(int(r["abnormal"]) for r in mine)), views))
    return out


def study_scores(studies: Sequence[WomanStudy]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, study scores) with the box's :func:`~models.triage_rule.study_score`."""
    y = np.array([s.abnormal for s in studies], dtype=int)
    s = np.array([study_score(s.views) for s in studies], dtype=np.float64)
    return y, s


def _gap_below(s: np.ndarray, v: float) -> float:
    below = s[s < v]
    return float((v + below.max()) / 2) if len(below) else float(v - 1e-6)


def _gap_above(s: np.ndarray, v: float) -> float:
    above = s[s > v]
    return float((v + above.min()) / 2) if len(above) else float(v + 1e-6)


def choose_points(y: Sequence[int], s: Sequence[float], review_sens: float = REVIEW_SENSITIVITY,
                  priority_spec: float = PRIORITY_SPECIFICITY) -> tuple[float, float]:
    """(review, priority) thresholds on study scores.

    Review: in the gap just below the score of the abnormal woman who completes
    ``review_sens`` of abnormal women (so at least that share is flagged, and as
    few normal women as possible). Priority: in the gap just above the normal
    woman who completes ``priority_spec`` of normal women (so at least that share
    stays below it). Thresholds sit midway between neighbouring scores, not on a
    woman's score, so a tiny shift of the scale does not flip her.
    """
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, np.float64)
    if y.all() or not y.any():
        raise ReleaseError("operating points need both normal and abnormal women in the predictions")
    pos = np.sort(s[y])[::-1]
    review = _gap_below(s, float(pos[math.ceil(review_sens * len(pos)) - 1]))
    neg = np.sort(s[~y])
    priority = _gap_above(s, float(neg[math.ceil(priority_spec * len(neg)) - 1]))
    return review, max(priority, review)


def _levels(studies: Sequence[WomanStudy], points: OperatingPoints, required=None) -> list[str]:
    """Each woman's triage level through the box's own :func:`~models.triage_rule.aggregate`."""
    out = []
    for st in studies:
        t = aggregate(list(st.views), [], points, required=st.present if required is None else required)
        if t.triage is None:
            raise ReleaseError(f"woman {st.woman}: {', '.join(t.reasons)}")
        out.append(t.triage)
    return out


def _rates(y: np.ndarray, lv: np.ndarray) -> dict[str, float]:
    """Sensitivity/specificity at both points from levels coded 0/1/2."""
    pos, neg = lv[y == 1], lv[y == 0]
    nan = float("nan")
    return {
        "sensitivity_review": float((pos >= 1).mean()) if len(pos) else nan,
        "specificity_review": float((neg == 0).mean()) if len(neg) else nan,
        "sensitivity_priority": float((pos == 2).mean()) if len(pos) else nan,
        "specificity_priority": float((neg <= 1).mean()) if len(neg) else nan,
    }


def summarize_women(y: Sequence[int], scores: Sequence[float], levels: Sequence[str], ids: Sequence[str],
                    n_boot: int = 2000, seed: int = 0) -> dict:
    """Woman-level figures from each woman's label, study score and triage level (95% CIs resampling women)."""
    y = np.asarray(y, int)
    s = np.asarray(scores, np.float64)
    lv = np.array([TRIAGE_LEVELS.index(t) for t in levels], dtype=int)
    lo, hi = bootstrap_ci(roc_auc, y, s, ids, n_boot=n_boot, seed=seed)
    out: dict = {"n": len(y), "n_abnormal": int(y.sum()), "auc": roc_auc(y, s), "auc_ci95": [lo, hi], **_rates(y, lv)}
    for k in ("sensitivity_review", "specificity_review", "sensitivity_priority", "specificity_priority"):
        out[f"{k}_ci95"] = list(bootstrap_ci(lambda yy, ll, k=k: _rates(yy, ll)[k], y, lv, ids, n_boot=n_boot, seed=seed))
    out["triage_counts"] = {t: list(levels).count(t) for t in TRIAGE_LEVELS}
    return out


def women_metrics(studies: Sequence[WomanStudy], points: OperatingPoints, n_boot: int = 2000, required=None) -> dict:
    """``mammo eval``'s ``women`` object: each woman through the box's aggregate at the shipped points."""
    y, s = study_scores(studies)
    return summarize_women(y, s, _levels(studies, points, required), [st.woman for st in studies], n_boot=n_boot)


def women_of_images(records: Sequence, p_abnormal: Sequence[float], p_malignant: Sequence[float],
                    points: OperatingPoints, n_boot: int = 2000) -> dict:
    """``women`` for ``mammo eval --images``: scored images (:class:`models.data.Record`) regrouped by woman."""
    rows = [{"ref": r.ref, "woman": r.woman, "abnormal": r.abnormal, "side": r.side, "p_abnormal": a, "p_malignant": m}
            for r, a, m in zip(records, p_abnormal, p_malignant, strict=True)]
    return women_metrics(woman_studies(rows, points.beta, points.fallback_p_other), points, n_boot=n_boot)


def woman_level(studies: Sequence[WomanStudy], points: OperatingPoints, data: str, n_boot: int = 2000,
                seed: int = 0, required=None) -> dict:
    """The ``woman_level`` block of model.json (the kiosk reads it): figures through the box's aggregation.

    ``required``: the views a woman must have (default: each woman's own views).
    """
    m = women_metrics(studies, points, n_boot=n_boot, required=required)
    return {
        "n_women": m["n"], "n_abnormal": m["n_abnormal"], "auc": m["auc"], "auc_ci95": m["auc_ci95"],
        **{k: m[k] for k in ("sensitivity_review", "specificity_review", "sensitivity_priority", "specificity_priority")},
        "triage_counts": m["triage_counts"], "data": data, "experimental": True,
    }


def woman_level_cis(studies: Sequence[WomanStudy], points: OperatingPoints, n_boot: int = 2000,
                    required=None) -> dict[str, list[float]]:
    """95% CIs of the four rates at fixed thresholds, resampling women."""
    m = women_metrics(studies, points, n_boot=n_boot, required=required)
    return {k: v for k, v in m.items() if k.endswith("_ci95") and k != "auc_ci95"}


def image_rates(rows: list[dict], beta: float, review: float, priority: float) -> dict[str, float]:
    """Image-level sensitivity/specificity of each image's suspicion at the same thresholds (for the card, side by side)."""
    studies = woman_studies(rows, beta)
    truth = {str(r.get("ref", "")): int(r["abnormal"]) for r in rows}
    y = np.array([truth[v.sop_uid] for st in studies for v in st.views])
    s = np.array([v.suspicion for st in studies for v in st.views])
    lv = np.where(s >= priority, 2, np.where(s >= review, 1, 0))
    return _rates(y, lv)


def derive(rows: list[dict], info: dict, data: str, n_boot: int = 2000, replacing: bool = False,
           checks: bool = True) -> dict:
    """New ``operating_points``, ``woman_level`` and ``woman_level_detail`` for a release's model.json.

    ``replacing``: the release already has thresholds chosen another way (per image); record what
    they did to women beside the new ones (kept from the first re-derivation on).
    """
    from models.study_score_checks import study_score_checks

    op = dict(info["operating_points"])
    beta = float(op.get("beta", 0.5))
    fallback = op.get("fallback_p_other")
    studies = woman_studies(rows, beta, fallback)
    y, s = study_scores(studies)
    review, priority = choose_points(y, s)
    points = OperatingPoints(review, priority, beta, fallback)
    wl = woman_level(studies, points, data, n_boot=n_boot)
    img = image_rates(rows, beta, review, priority)
    old = {k: op[k] for k in ("review", "priority", "cv_specificity_at_review", "cv_specificity_at_priority") if k in op}
    op.update({
        "review": review,
        "priority": priority,
        "chosen_on": ("study score (edge_agent.inference.triage.study_score) of each woman's out-of-fold views; "
                      f"review: >= {REVIEW_SENSITIVITY:.0%} of abnormal women flagged, priority: >= "
                      f"{PRIORITY_SPECIFICITY:.0%} of normal women below"),
        "cv_sensitivity_at_review": img["sensitivity_review"],
        "cv_specificity_at_review": img["specificity_review"],
        "cv_sensitivity_at_priority": img["sensitivity_priority"],
        "cv_specificity_at_priority": img["specificity_priority"],
        "cv_rates_unit": "image (each image's suspicion against the same thresholds); woman-level figures in woman_level",
    })
    replaced = info.get("woman_level_detail", {}).get("image_level_points_replaced")
    detail = {
        "rates_ci95": woman_level_cis(studies, points, n_boot=n_boot),
        "image_level_points_replaced": replaced or (
            {**old, "woman_level_at_them": _old_levels(studies, old, beta, fallback, data)} if replacing else None),
        "study_score_checks": study_score_checks(rows, beta, fallback, n_boot=n_boot) if checks else None,
    }
    return {"operating_points": op, "woman_level": wl, "woman_level_detail": detail}


def _old_levels(studies, old: dict, beta: float, fallback, data: str) -> dict | None:
    if "review" not in old:
        return None
    wl = woman_level(studies, OperatingPoints(float(old["review"]), float(old["priority"]), beta, fallback), data, n_boot=200)
    return {k: wl[k] for k in ("sensitivity_review", "specificity_review", "sensitivity_priority",
                               "specificity_priority", "triage_counts")}


def describe_data(info: dict, n_women: int) -> str:
    k = info.get("cv_metrics", {}).get("k", 5)
    return f"mini-MIAS digitised film (MLO views), {n_women} women, {k}-fold cross-validation"


def rederive(folder: Path, n_boot: int = 2000) -> dict:
    """Re-derive a built release's operating points from its cv_predictions.json and rewrite
    model.json, MODEL_CARD.md and manifest.json (no retraining)."""
    from models.model_card import render_card
    from models.release_files import write_manifest

    folder = Path(folder)
    if (folder / "manifest.sig").exists():
        raise ReleaseError(f"{folder} is signed (manifest.sig): re-derive on the unsigned build, then have the coordinator sign it again")
    info = json.loads((folder / "model.json").read_text())
    rows = json.loads((folder / "cv_predictions.json").read_text())
    n_women = len({str(r["woman"]) for r in rows})
    info.update(derive(rows, info, describe_data(info, n_women), n_boot=n_boot,
                       replacing="woman_level" not in info))
    (folder / "model.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (folder / "MODEL_CARD.md").write_text(render_card(info, folder))
    write_manifest(folder, info["version"])
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.operating_points", description=__doc__.split("\n")[0])
    ap.add_argument("release", type=Path, help="a release folder with model.json and cv_predictions.json")
    ap.add_argument("--write", action="store_true", help="rewrite model.json, MODEL_CARD.md and manifest.json")
    ap.add_argument("--n-boot", type=int, default=2000)
    a = ap.parse_args(argv)
    if a.write:
        info = rederive(a.release, n_boot=a.n_boot)
    else:
        info = json.loads((a.release / "model.json").read_text())
        rows = json.loads((a.release / "cv_predictions.json").read_text())
        info = {**info, **derive(rows, info, describe_data(info, len({str(r["woman"]) for r in rows})), n_boot=a.n_boot,
                                 replacing="woman_level" not in info)}
    print(json.dumps({k: info[k] for k in ("operating_points", "woman_level", "woman_level_detail")}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
