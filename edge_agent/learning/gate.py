"""The evaluation gate: a locally adapted model serves this box only if it beats the active one on women it never saw.

The held-back part of the box's confirmed studies (``examples.held_back``, by
woman) is scored with the box's own study score (``models.trainable.study_scores``,
fp32 on the same frozen features) by the active model's trainable part and by
the adapted one. The adapted model is marked to serve only if its AUC beats
the active model's by ``margin``, with at least ``min_cases`` positive and
negative held-back studies each; otherwise it is only an update candidate for
federated sync. The comparison is recorded with the round (``ledger.record_gate``).

Serving: a "serve" verdict is acted on by ``serve``: the box builds the
adapted release, signs it with its own local key and activates it through
``edge_agent.inference.activation`` (signature, base, self-test), so the box
screens with it from its next study.
"""

from __future__ import annotations

import math
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

    def metrics(self) -> dict[str, float]:
        """What the update carries about the held-back comparison (aggregates only)."""
        out = {"heldback_studies": float(self.n_studies), "heldback_positive": float(self.n_positive)}
        if self.active_auc is not None:
            out["heldback_auc_active"] = self.active_auc
        if self.adapted_auc is not None:
            out["heldback_auc_adapted"] = self.adapted_auc
        return out


def judge(labels: np.ndarray, active: np.ndarray, adapted: np.ndarray, margin: float, min_cases: int) -> GateResult:
    """The gate's rule, pure: AUCs of the two score vectors on the same held-back studies, and the decision."""
    from models.evaluation import roc_auc

    y = np.asarray(labels).astype(int)
    n, pos = len(y), int(y.sum())
    if pos < min_cases or n - pos < min_cases:
        return GateResult("candidate", None, None, n, pos,
                          f"too few held-back studies to compare: {pos} positive, {n - pos} negative (need {min_cases} each)")
    a, b = roc_auc(y.tolist(), np.asarray(active).tolist()), roc_auc(y.tolist(), np.asarray(adapted).tolist())
    if math.isnan(a) or math.isnan(b):
        return GateResult("candidate", None, None, n, pos, "AUC undefined on the held-back studies")
    if b >= a + margin:
        return GateResult("serve", a, b, n, pos, f"adapted AUC {b:.3f} >= active {a:.3f} + margin {margin:.3f}")
    return GateResult("candidate", a, b, n, pos, f"adapted AUC {b:.3f} < active {a:.3f} + margin {margin:.3f}")


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
