"""Honest metrics: AUC, operating points and 95% CIs resampled by woman.

All functions are pure (arrays in, numbers out). Confidence intervals come from
a bootstrap that resamples WOMEN with replacement and keeps both of a woman's
images together, because her two breasts are correlated; resampling images
would make the intervals too narrow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "roc_auc",
    "sensitivity_at_specificity",
    "specificity_at_sensitivity",
    "bootstrap_ci",
    "summarize",
    "pointing_hit",
]


def roc_auc(y: Sequence[int], s: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN if one class."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(allv))
    ranks_sorted = np.arange(1, len(allv) + 1, dtype=np.float64)
    # average ranks over ties
    _, start, counts = np.unique(allv, return_index=True, return_counts=True)
    for st, c in zip(start, counts, strict=False):
        if c > 1:
            ranks_sorted[st : st + c] = ranks_sorted[st : st + c].mean()
    ranks[order] = ranks_sorted
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def sensitivity_at_specificity(y, s, specificity: float = 0.90) -> float:
    """Sensitivity at the threshold that keeps at least ``specificity`` of negatives below it."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, dtype=np.float64)
    if y.all() or not y.any():
        return float("nan")
    neg = np.sort(s[~y])
    k = int(np.ceil(specificity * len(neg))) - 1
    thr = neg[min(max(k, 0), len(neg) - 1)]
    return float((s[y] > thr).mean())


def specificity_at_sensitivity(y, s, sensitivity: float = 0.85) -> float:
    """Specificity at the threshold that still flags at least ``sensitivity`` of positives."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, dtype=np.float64)
    if y.all() or not y.any():
        return float("nan")
    pos = np.sort(s[y])[::-1]
    k = int(np.ceil(sensitivity * len(pos))) - 1
    thr = pos[min(max(k, 0), len(pos) - 1)]
    return float((s[~y] < thr).mean())


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: Sequence[int],
    s: Sequence[float],
    women: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile CI of ``metric(y, s)``, resampling women with replacement."""
    y = np.asarray(y)
    s = np.asarray(s, dtype=np.float64)
    women = np.asarray(women)
    uniq, inv = np.unique(women, return_inverse=True)
    members = [np.nonzero(inv == i)[0] for i in range(len(uniq))]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), len(uniq))
        idx = np.concatenate([members[i] for i in pick])
        v = metric(y[idx], s[idx])
        if not np.isnan(v):
            vals.append(v)
    if not vals:
        return (float("nan"), float("nan"))
    a = (1 - level) / 2
    return (float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a)))


def paired_auc_difference_ci(y: ArrayLike, a: ArrayLike, b: ArrayLike, groups: Sequence[str] | None = None,
                             n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """AUC of scores ``b`` minus AUC of ``a`` on the same cases, with a percentile CI that resamples ``groups`` (women;
    each case its own group when None) once for both arms, so what the two share cancels: (difference, low, high)."""
    yv, av, bv = np.asarray(y).astype(int), np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    point = roc_auc(yv, bv) - roc_auc(yv, av)
    _, inv = np.unique(np.asarray(groups) if groups is not None else np.arange(len(yv)), return_inverse=True)
    members = [np.nonzero(inv == i)[0] for i in range(int(inv.max()) + 1)] if len(yv) else []
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot if members else 0):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        d = roc_auc(yv[idx], bv[idx]) - roc_auc(yv[idx], av[idx])
        if d == d:
            boots.append(d)
    if not boots:
        return float(point), float("nan"), float("nan")
    tail = (1 - level) / 2
    return float(point), float(np.quantile(boots, tail)), float(np.quantile(boots, 1 - tail))


def _with_ci(metric, y, s, women, n_boot, seed) -> dict:
    lo, hi = bootstrap_ci(metric, y, s, women, n_boot=n_boot, seed=seed)
    return {"value": metric(np.asarray(y), np.asarray(s)), "ci95": [lo, hi]}


def summarize(
    abnormal: Sequence[int],
    malignant: Sequence[int],
    score_abnormal: Sequence[float],
    score_malignant: Sequence[float],
    women: Sequence[str],
    tissue: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """The figures the model card and ``mammo eval`` report.

    * ``auc_abnormal``: normal vs any finding, all images.
    * ``auc_malignant``: benign vs malignant among images with a finding
      (the score is the malignant channel).
    * ``sens_at_90spec`` / ``spec_at_85sens``: abnormal score, all images.
    * ``per_density``: the same for each tissue class (F/G/D) when given.
    """
    ab = np.asarray(abnormal).astype(int)
    ml = np.asarray(malignant).astype(int)
    sa = np.asarray(score_abnormal, dtype=np.float64)
    sm = np.asarray(score_malignant, dtype=np.float64)
    wm = np.asarray(women)
    sel = ab == 1
    out = {
        "n_images": int(len(ab)),
        "n_women": int(len(np.unique(wm))),
        "n_abnormal": int(ab.sum()),
        "n_malignant": int(ml.sum()),
        "auc_abnormal": _with_ci(roc_auc, ab, sa, wm, n_boot, seed),
        "auc_malignant": _with_ci(roc_auc, ml[sel], sm[sel], wm[sel], n_boot, seed),
        "sens_at_90spec": _with_ci(sensitivity_at_specificity, ab, sa, wm, n_boot, seed),
        "spec_at_85sens": _with_ci(specificity_at_sensitivity, ab, sa, wm, n_boot, seed),
    }
    if tissue is not None:
        ts = np.asarray(tissue)
        per = {}
        for t in sorted(set(ts.tolist()) - {""}):
            m = ts == t
            per[t] = {
                "n_images": int(m.sum()),
                "n_abnormal": int(ab[m].sum()),
                "auc_abnormal": _with_ci(roc_auc, ab[m], sa[m], wm[m], n_boot, seed),
                "sens_at_90spec": _with_ci(sensitivity_at_specificity, ab[m], sa[m], wm[m], n_boot, seed),
                "spec_at_85sens": _with_ci(specificity_at_sensitivity, ab[m], sa[m], wm[m], n_boot, seed),
            }
        out["per_density"] = per
    return out


def pointing_hit(heat: np.ndarray, circles: Sequence[tuple[float, float, float]]) -> bool:
    """Pointing game: is the heatmap's peak inside any lesion circle (x, y, r)?

    ``heat`` and the circles must be on the same pixel grid.
    """
    iy, ix = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return any((ix - x) ** 2 + (iy - y) ** 2 <= r**2 for x, y, r in circles)
