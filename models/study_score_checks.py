"""What was measured about the form of the study score, for the model card.

Two questions the triage rule answers by construction and the card must
answer by measurement: is the other breast subtracted per view before the
maximum over a breast's views, or per breast after it; and how much of the
other breast to subtract (``beta``). Pure functions over out-of-fold
prediction rows; :func:`models.operating_points.derive` stores their result
in model.json's ``woman_level_detail``.
"""

from __future__ import annotations

import math

import numpy as np

from models.evaluation import bootstrap_ci, roc_auc
from models.operating_points import WomanStudy, study_scores, woman_studies
from models.triage_rule import ViewScore, study_score

__all__ = ["study_score_checks", "contralateral_order_check"]


def _after_max_score(st: WomanStudy, beta: float) -> float:
    """The alternative the box does NOT run: each breast's maximum over views first, then the other breast subtracted."""
    top: dict[str, float] = {}
    for v in st.views:
        top[v.laterality] = max(top.get(v.laterality, -1.0), v.p_abnormal)
    if len(top) < 2:
        return max(top.values())
    a, b = top["L"], top["R"]
    return max(a - beta * b, b - beta * a)


def contralateral_order_check(n_women: int = 20000, seed: int = 0) -> list[dict]:
    """Constructed 4-view check: contralateral term per view before the maximum, or per breast after it.

    mini-MIAS has one view per breast, where the two orders are the same number,
    so the question is asked of simulated studies whose logit structure is fitted
    to the 0.1.0 CV predictions of normal women (woman-shared share of variance
    0.42, total SD 0.85, mean -0.29); a finding adds ``signal`` logits to one
    breast, seen in both views (70%) or one. ``mlo_offset`` is a projection
    effect (the MLO shows the pectoral muscle) that differs between women.
    Returns the woman-level AUC of both orders per setting.
    """
    from models.release_files import CONTRALATERAL_BETA

    rng = np.random.default_rng(seed)
    out = []
    sd = 0.85
    for signal in (0.36, 1.0):
        for mlo_sd in (0.0, 0.5, 1.0):
            y = rng.integers(0, 2, n_women)
            woman = rng.normal(0, sd * math.sqrt(0.42), n_women)
            proj = rng.normal(0, mlo_sd, n_women)  # how much more suspicious the MLO looks, per woman
            finding_side = rng.integers(0, 2, n_women)
            seen = rng.choice(3, n_women, p=[0.7, 0.15, 0.15])  # both views / CC only / MLO only
            z = np.empty((n_women, 2, 2))  # woman, breast (L, R), view (CC, MLO)
            for b in range(2):
                breast = rng.normal(0, sd * math.sqrt(0.2), n_women)
                for v in range(2):
                    z[:, b, v] = -0.29 + woman + breast + rng.normal(0, sd * math.sqrt(0.38), n_women) + v * proj
                    hit = (y == 1) & (finding_side == b) & ((seen == 0) | (seen == 1 + v))
                    z[hit, b, v] += signal
            p = 1 / (1 + np.exp(-z))
            susp = p - CONTRALATERAL_BETA * p[:, ::-1, :]  # each view against the same view of the other breast
            before = susp.max(axis=(1, 2))
            top = p.max(axis=2)  # each breast's most suspicious view first
            after = np.maximum(top[:, 0] - CONTRALATERAL_BETA * top[:, 1], top[:, 1] - CONTRALATERAL_BETA * top[:, 0])
            lat, view = ("L", "R"), ("CC", "MLO")
            for i in range(50):  # the vectorised rules are the box's study_score and the alternative, woman by woman
                st = WomanStudy(str(i), int(y[i]), tuple(
                    ViewScore("", lat[b], view[v], float(p[i, b, v]), 0.0, float(susp[i, b, v]), 0, 0, "")
                    for b in range(2) for v in range(2)))
                assert abs(study_score(st.views) - before[i]) < 1e-12
                assert abs(_after_max_score(st, CONTRALATERAL_BETA) - after[i]) < 1e-12
            out.append({"signal_logit": signal, "mlo_offset_sd": mlo_sd,
                        "auc_before_max": round(roc_auc(y, before), 4), "auc_after_max": round(roc_auc(y, after), 4)})
    return out


def _beta_auc(rows: list[dict], beta: float, fallback: float | None, n_boot: int) -> dict:
    y, s = study_scores(woman_studies(rows, beta, fallback))
    ids = sorted({str(r["woman"]) for r in rows}, key=lambda w: (len(w), w))
    lo, hi = bootstrap_ci(roc_auc, y, s, ids, n_boot=n_boot)
    return {"auc": roc_auc(y, s), "auc_ci95": [lo, hi]}


def _nested_beta(rows: list[dict], fallback: float | None, betas=(0.0, 0.5, 1.0)) -> dict:
    """Choose beta on the other folds' women, score each fold's women with it: the honest value of choosing beta."""
    folds = sorted({r["fold"] for r in rows})
    chosen, y_all, s_all, fixed_auc, nested_auc = {}, [], [], [], []
    for f in folds:
        train = [r for r in rows if r["fold"] != f]
        test = [r for r in rows if r["fold"] == f]
        best = max(betas, key=lambda b: roc_auc(*study_scores(woman_studies(train, b, fallback))))
        chosen[str(f)] = best
        y, s = study_scores(woman_studies(test, best, fallback))
        y_all += y.tolist()
        s_all += s.tolist()
        nested_auc.append(roc_auc(y, s))
        fixed_auc.append(roc_auc(*study_scores(woman_studies(test, 0.5, fallback))))
    return {"beta_chosen_per_fold": chosen, "auc_pooled": roc_auc(y_all, s_all),
            "auc_mean_over_folds": float(np.nanmean(nested_auc)), "auc_mean_over_folds_fixed_0.5": float(np.nanmean(fixed_auc))}


def _paired_difference(rows: list[dict], beta: float, fallback: float | None, n_boot: int, seed: int = 0) -> dict:
    """AUC(w = 1) - AUC(w = beta) on the same women, with a CI resampling women (both scores move together)."""
    y, s1 = study_scores(woman_studies(rows, 1.0, fallback))
    _, sb = study_scores(woman_studies(rows, beta, fallback))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        d = roc_auc(y[i], s1[i]) - roc_auc(y[i], sb[i])
        if d == d:
            diffs.append(d)
    return {"value": roc_auc(y, s1) - roc_auc(y, sb), "ci95": [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))]}


def study_score_checks(rows: list[dict], beta: float, fallback: float | None, n_boot: int = 2000) -> dict:
    """What the card records about the study score: orders of max and subtraction, and the other breast's weight."""
    studies = woman_studies(rows, beta, fallback)
    after = np.array([_after_max_score(st, beta) for st in studies])
    _, before = study_scores(studies)
    one_view = all(len(st.views) == len({v.laterality for v in st.views}) for st in studies)
    return {
        "one_view_per_breast": one_view,
        "max_abs_difference_before_vs_after_max": float(np.abs(before - after).max()),
        "woman_auc_by_beta": {str(b): _beta_auc(rows, b, fallback, n_boot) for b in (0.0, 0.5, 1.0)},
        "woman_auc_difference_1_minus_beta": _paired_difference(rows, beta, fallback, n_boot),
        "nested_beta_selection": _nested_beta(rows, fallback) if "fold" in rows[0] else None,
        "contralateral_order_simulation": contralateral_order_check(),
    }
