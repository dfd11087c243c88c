"""The federated experiment's pure pieces: clinics by density, woman-level folds, metrics per woman.

``mammo fl simulate`` (``sync.simulate``) and the local-DP demonstration
split ``../shared/data/mias`` into three *clinics* by the woman's density
class (F fatty, G fatty-glandular, D dense): a non-IID split, like regions
whose breast tissue differs.  Everything that decides who trains and who is
tested lives here, free of sync and HE, so it can be tested on its own:

* **A woman is one unit.** Images 2k-1 and 2k (``patient_pair``) are her two
  breasts; she belongs to one clinic and to one fold, never two.  Her clinic
  is her tissue class (the same in both breasts on mini-MIAS; a folder where
  it is not is refused rather than guessed).
* **Folds are dealt within each clinic** (``models.data.woman_folds`` per
  clinic, stratified by her worst finding), so every clinic has held-out
  women in every fold and the pooled out-of-fold predictions cover each
  clinic's women exactly once.
* **Metrics are per woman, with the box's own rule.** Per-image
  probabilities are regrouped into the studies the box's worker would make
  (``models.operating_points.woman_studies``: each view against the other
  breast, ``models.triage_rule.study_score``: the most suspicious breast);
  the AUC of that study score has a 95% interval from resampling women
  (``models.evaluation.bootstrap_ci``).  A paired difference resamples the
  same women for both arms, which is far tighter than comparing two
  intervals.

The training pieces here only prepare the box's own code: each fold's
stand-in release (:func:`fold_release`, the release recipe on the fold's
training women), the women as ``models.dp.StudySet`` over cached frozen
features, and the configurations of ``models.dp``'s rounds, private
(:func:`dp_config`, noise from the box's accountant) or not
(:func:`plain_config`).  The encrypted aggregation (``sync.he``,
``sync.coordinator.strategy``) is driven from ``sync.simulate``: ``models``
never imports ``sync``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.data import Record, woman_folds
from models.errors import DatasetError
from models.evaluation import bootstrap_ci, paired_auc_difference_ci, roc_auc

__all__ = [
    "Women",
    "study_set",
    "image_probabilities",
    "plain_config",
    "dp_config",
    "fold_release",
    "CLINICS",
    "ClinicSplit",
    "clinic_of_women",
    "split_clinics",
    "prediction_rows",
    "woman_scores",
    "woman_auc",
    "paired_auc_difference",
]

#: Clinic names are the mini-MIAS tissue classes, fatty to dense.
CLINICS = ("F", "G", "D")


@dataclass(frozen=True)
class ClinicSplit:
    """Per image (same order as the records): its woman's clinic and fold."""

    clinic: np.ndarray  # (N,) str
    fold: np.ndarray  # (N,) int
    k: int

    def train_test(self, fold: int, clinic: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Image indices (train, held-out) for ``fold``, of one clinic or (None) of all."""
        here = np.ones(len(self.fold), bool) if clinic is None else self.clinic == clinic
        return np.nonzero(here & (self.fold != fold))[0], np.nonzero(here & (self.fold == fold))[0]


def clinic_of_women(records: Sequence[Record]) -> dict[str, str]:
    """Each woman's clinic: her tissue class, which both of her images must share."""
    out: dict[str, str] = {}
    for r in records:
        if r.tissue not in CLINICS:
            raise DatasetError(f"image {r.ref} has tissue {r.tissue!r}; the clinic split needs F, G or D "
                               "in images.csv's 'tissue' column for every image")
        if out.setdefault(r.woman, r.tissue) != r.tissue:
            raise DatasetError(f"woman {r.woman} has images of tissue {out[r.woman]} and {r.tissue}; "
                               "a woman must belong to one clinic: fix images.csv or drop her")
    return out


def split_clinics(records: Sequence[Record], k: int = 5, seed: int = 0) -> ClinicSplit:
    """Clinics by density and woman-level folds dealt within each clinic (see the module docstring)."""
    clinic_of = clinic_of_women(records)
    clinic = np.array([clinic_of[r.woman] for r in records])
    fold = np.zeros(len(records), int)
    for c in CLINICS:
        idx = np.nonzero(clinic == c)[0]
        if len(idx) == 0:
            continue
        n_women = len({records[i].woman for i in idx})
        if n_women < k:
            raise DatasetError(f"clinic {c} has {n_women} women, fewer than {k} folds; use fewer folds (--folds)")
        fold[idx] = woman_folds([records[i] for i in idx], k=k, seed=seed)
    return ClinicSplit(clinic, fold, k)


def prediction_rows(records: Sequence[Record], idx: Sequence[int], p_abnormal: Sequence[float],
                    clinic: Sequence[str] | None = None, fold: int | None = None) -> list[dict]:
    """Per-image rows in the shape ``models.operating_points.woman_studies`` reads."""
    rows = []
    for j, i in enumerate(idx):
        r = records[int(i)]
        rows.append({"ref": r.ref, "woman": r.woman, "side": r.side, "abnormal": r.abnormal,
                     "p_abnormal": float(p_abnormal[j]),
                     "clinic": None if clinic is None else str(clinic[int(i)]), "fold": fold})
    return rows


def woman_scores(rows: Sequence[dict], beta: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(women, labels, study scores) through the box's own study rule."""
    from models.operating_points import study_scores, woman_studies

    studies = woman_studies(rows, beta)
    y, s = study_scores(studies)
    return [st.woman for st in studies], y, s


def woman_auc(rows: Sequence[dict], beta: float, n_boot: int = 2000, seed: int = 0) -> dict:
    """AUC of the study score per woman, with a 95% CI resampling women."""
    women, y, s = woman_scores(rows, beta)
    lo, hi = bootstrap_ci(roc_auc, y, s, women, n_boot=n_boot, seed=seed)
    return {"auc": roc_auc(y, s), "ci95": [lo, hi], "n_women": len(women), "n_abnormal": int(y.sum())}


def paired_auc_difference(rows_a: Sequence[dict], rows_b: Sequence[dict], beta: float, n_boot: int = 2000,
                          seed: int = 0) -> dict:
    """Woman-level AUC of B minus A on the same women, 95% CI resampling women once for both."""
    wa, ya, sa = woman_scores(rows_a, beta)
    wb, yb, sb = woman_scores(rows_b, beta)
    if wa != wb or not np.array_equal(ya, yb):
        raise ValueError("a paired difference needs the same women with the same labels in both arms")
    point, low, high = paired_auc_difference_ci(ya, sa, sb, n_boot=n_boot, seed=seed)  # one row per woman already
    ci = [low, high]
    return {"difference": float(point), "ci95": ci, "n_women": len(wa)}


# --- the experiment's data and training (torch; imported lazily by callers) -------------------------------------


@dataclass(frozen=True)
class Women:
    """The women of a data set as the box's studies: her image indices in arrival order and her label."""

    ids: tuple[str, ...]
    images: tuple[tuple[int, ...], ...]
    labels: np.ndarray  # (W,) 0/1: any finding in either breast

    @classmethod
    def of(cls, records: Sequence[Record]) -> Women:
        by: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            by.setdefault(r.woman, []).append(i)
        ids = tuple(sorted(by, key=lambda w: (len(w), w)))
        return cls(ids, tuple(tuple(by[w]) for w in ids),
                   np.array([max(records[i].abnormal for i in by[w]) for w in ids], np.float32))

    def among(self, image_idx: np.ndarray) -> np.ndarray:
        """Indices (into ``ids``) of the women whose images are all in ``image_idx``."""
        inside = set(int(i) for i in image_idx)
        return np.array([j for j, imgs in enumerate(self.images) if set(imgs) <= inside], int)


def study_set(features: np.ndarray, records: Sequence[Record], women: Women, which: np.ndarray):
    """``models.dp.StudySet`` of the women ``which``: each woman's views (frozen features) in arrival order."""
    from models.dp import StudySet

    studies = []
    for j in which:
        imgs = women.images[int(j)]
        views = [(records[i].side or ("R" if n == 0 else "L"), "MLO") for n, i in enumerate(imgs)]
        studies.append((features[list(imgs)], views, int(women.labels[int(j)])))
    return StudySet.from_studies(studies)


def image_probabilities(part, features: np.ndarray, idx: np.ndarray):
    """p(abnormal) per image from a trainable part (the box's score: the map's maximum, channel 0)."""
    import torch

    part.eval()
    with torch.no_grad():
        out = torch.sigmoid(part.image_logits(torch.from_numpy(features[idx]))[:, 0]).numpy()
    part.train()
    return out


def plain_config(n_women: int, epochs: float, batch: int, lr: float, seed: int, beta: float):
    """A non-private round over ``n_women``: Poisson batches of about ``batch`` women for ``epochs`` passes."""
    from models.dp import DPConfig

    q = min(1.0, batch / max(n_women, 1))
    return DPConfig(noise_multiplier=0.0, max_grad_norm=1.0, sample_rate=q, steps=max(1, round(epochs / q)), lr=lr,
                    seed=seed, beta=beta)


def dp_config(n_women: int, steps: int, batch: int, clip: float, lr: float, epsilon: float, delta: float, seed: int,
              beta: float, rounds: int = 1):
    """One of ``rounds`` equal DP rounds whose composition spends exactly ``epsilon`` at ``delta`` for each woman.

    The noise multiplier comes from the box's own accountant (``models.dp.noise_for_epsilon``).
    """
    from models.dp import DPConfig, noise_for_epsilon

    q = min(1.0, batch / max(n_women, 1))
    sigma = noise_for_epsilon(epsilon, q, steps * rounds, delta)
    return DPConfig(noise_multiplier=sigma, max_grad_norm=clip, sample_rate=q, steps=steps, lr=lr, delta=delta,
                    seed=seed, beta=beta)


def fold_release(arrays, train_idx: np.ndarray, epochs: int, seed: int, init_state: dict | None):
    """The fold's stand-in for the shipped release: the whole network trained on the fold's training women only.

    The shipped 0.1.0 saw every mini-MIAS woman, so adapting it and testing on
    those women would leak; this network has never seen the fold's held-out
    women.  ``init_state``: synthetic pretraining (``models.training.pretrain_state``), no real woman in it.
    """
    from models.training import TrainConfig, train

    cfg = TrainConfig(epochs=epochs, seed=seed, threads=1)
    return train(arrays, train_idx, cfg, progress=False, init_state=init_state)
