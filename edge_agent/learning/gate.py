"""The evaluation gate: a locally adapted model serves this box only if it beats the active one on women it never saw.

The held-back part of the box's confirmed studies (``examples.held_back``, by
woman) is scored with the box's own study score (``models.trainable.study_scores``,
fp32 on the same frozen features) by the active model's trainable part and by
the adapted one. The adapted model is marked to serve only if the lower end of
the 95% interval of its paired AUC gain (resampling held-back women once for
both models, ``models.evaluation.paired_auc_difference_ci``) reaches
``margin``, with at least ``min_cases`` positive and negative held-back
studies each; otherwise it is only an update candidate for federated sync.
A point estimate alone is not enough: on the few dozen women a clinic holds
back, a noisy DP round beats the active model by chance about half the time
(docs/local-dp-adaptation.md: intervals of +-0.15-0.2), and a box that
served those would screen worse as often as better. The comparison is
recorded with the round (``ledger.record_gate``).

Serving: a "serve" verdict is acted on by ``serve``: the box builds the
adapted release, signs it with its own local key and activates it through
``edge_agent.inference.activation`` (signature, base, self-test), so the box
screens with it from its next study.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from models.dp import StudySet
    from models.trainable import TrainablePart


@dataclass(frozen=True)
class GateResult:
    decision: str  # serve | candidate
    active_auc: float | None
    adapted_auc: float | None
    n_studies: int
    n_positive: int
    reason: str
    gain_ci95: tuple[float, float] | None = None  # paired AUC gain of the adapted model, 95% interval over held-back women

    def metrics(self) -> dict[str, float]:
        """What the update carries about the held-back comparison (aggregates only)."""
        out = {"heldback_studies": float(self.n_studies), "heldback_positive": float(self.n_positive)}
        if self.active_auc is not None:
            out["heldback_auc_active"] = self.active_auc
        if self.adapted_auc is not None:
            out["heldback_auc_adapted"] = self.adapted_auc
        if self.gain_ci95 is not None:
            out["heldback_auc_gain_low"], out["heldback_auc_gain_high"] = self.gain_ci95
        return out


def judge(labels: np.ndarray, active: np.ndarray, adapted: np.ndarray, margin: float, min_cases: int,
          women: Sequence[str] | None = None, n_boot: int = 2000) -> GateResult:
    """The gate's rule, pure: the paired AUC gain of ``adapted`` over ``active`` on the same held-back studies, its 95%
    interval resampling ``women`` (each study its own woman when None), and the decision."""
    from models.evaluation import paired_auc_difference_ci, roc_auc

    y = np.asarray(labels).astype(int)
    n, pos = len(y), int(y.sum())
    if pos < min_cases or n - pos < min_cases:
        return GateResult("candidate", None, None, n, pos,
                          f"too few held-back studies to compare: {pos} positive, {n - pos} negative (need {min_cases} each)")
    a, b = roc_auc(y.tolist(), np.asarray(active).tolist()), roc_auc(y.tolist(), np.asarray(adapted).tolist())
    if math.isnan(a) or math.isnan(b):
        return GateResult("candidate", None, None, n, pos, "AUC undefined on the held-back studies")
    _, low, high = paired_auc_difference_ci(y, active, adapted, women, n_boot=n_boot, seed=0)
    ci = None if math.isnan(low) else (low, high)
    said = f"adapted AUC {b:.3f}, active {a:.3f}, gain 95% CI {low:+.3f} to {high:+.3f}"
    if ci is not None and low >= margin:
        return GateResult("serve", a, b, n, pos, f"{said}: the lower end reaches the margin {margin:.3f}", ci)
    return GateResult("candidate", a, b, n, pos, f"{said}: the lower end is below the margin {margin:.3f}", ci)


def scores(part: TrainablePart, data: StudySet, beta: float, fallback: float | None) -> np.ndarray:
    """Study scores of every study in ``data`` under ``part`` (fp32, no gradient)."""
    import torch

    from models.trainable import study_scores

    part.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(data), 16):
            sl = slice(i, i + 16)
            out.append(study_scores(part, torch.from_numpy(data.features[sl]), torch.from_numpy(data.mask[sl]),
                                    torch.from_numpy(data.other[sl]), beta, fallback).numpy())
    part.train()
    return np.concatenate(out) if out else np.zeros(0, np.float32)
