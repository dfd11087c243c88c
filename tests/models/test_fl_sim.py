"""The federated experiment's split and woman-level metrics (models.fl_sim)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.data import Record
from models.errors import DatasetError
from models.evaluation import roc_auc
from models.fl_sim import CLINICS, clinic_of_women, paired_auc_difference, prediction_rows, split_clinics, woman_auc


def _records(n_women: int, tissues: str = "FGD", seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for w in range(1, n_women + 1):
        t = tissues[w % len(tissues)]
        ab = int(rng.random() < 0.4)
        for side, num in (("R", 2 * w - 1), ("L", 2 * w)):
            out.append(Record(f"mdb{num:03d}", Path(f"images/mdb{num:03d}.png"), ab if side == "R" else 0, 0,
                              str(w), tissue=t, side=side))
    return out


def _check_split(records: list[Record], k: int) -> None:
    split = split_clinics(records, k=k, seed=3)
    clinic_by_woman: dict[str, set[str]] = {}
    fold_by_woman: dict[str, set[int]] = {}
    for r, c, f in zip(records, split.clinic, split.fold, strict=True):
        clinic_by_woman.setdefault(r.woman, set()).add(str(c))
        fold_by_woman.setdefault(r.woman, set()).add(int(f))
    assert all(len(v) == 1 for v in clinic_by_woman.values()), "a woman in two clinics"
    assert all(len(v) == 1 for v in fold_by_woman.values()), "a woman in two folds"
    for f in range(k):
        for clinic in (*CLINICS, None):
            tr, te = split.train_test(f, clinic)
            assert not {records[i].woman for i in tr} & {records[i].woman for i in te}, "a woman in train and test"
            if clinic is not None:
                assert len(te) > 0, f"clinic {clinic} has no held-out women in fold {f}"
                assert set(split.clinic[np.concatenate([tr, te])]) == {clinic}
    # every image is held out exactly once over the folds
    held = np.concatenate([split.train_test(f)[1] for f in range(k)])
    assert sorted(held.tolist()) == list(range(len(records)))


def test_split_keeps_each_woman_in_one_clinic_and_one_fold():
    _check_split(_records(30), k=5)


def test_split_on_real_mias_is_by_density_and_by_woman(mias_records):
    _check_split(mias_records, k=5)
    split = split_clinics(mias_records, k=5, seed=0)
    for r, c in zip(mias_records, split.clinic, strict=True):
        assert c == r.tissue


def test_a_woman_with_two_tissue_classes_is_refused():
    recs = _records(6)
    bad = recs[:1] + [Record(recs[1].ref, recs[1].path, 0, 0, recs[0].woman, tissue="D" if recs[0].tissue != "D" else "F",
                             side="L")] + recs[2:]
    with pytest.raises(DatasetError, match="one clinic"):
        clinic_of_women(bad)


def test_too_few_women_for_the_folds_says_so():
    with pytest.raises(DatasetError, match="fewer than 5 folds"):
        split_clinics(_records(6), k=5)


def _rows(scores_r: list[float], scores_l: list[float], labels: list[int]) -> list[dict]:
    recs = []
    for w, ab in enumerate(labels, start=1):
        recs += [Record(f"mdb{2 * w - 1:03d}", Path("x"), ab, 0, str(w), tissue="F", side="R"),
                 Record(f"mdb{2 * w:03d}", Path("x"), 0, 0, str(w), tissue="F", side="L")]
    p = [v for pair in zip(scores_r, scores_l, strict=True) for v in pair]
    return prediction_rows(recs, range(len(recs)), p)


def test_woman_auc_uses_the_study_score_and_its_interval_covers_it():
    rng = np.random.default_rng(1)
    labels = [int(v) for v in rng.random(40) < 0.5]
    right = [0.3 + 0.15 * ab + 0.3 * rng.random() for ab in labels]
    left = [0.3 + 0.1 * rng.random() for _ in labels]
    rows = _rows(right, left, labels)
    out = woman_auc(rows, beta=0.5, n_boot=300)
    # study score = max over breasts of p - 0.5 * p(other breast): the right breast wins for abnormal women
    study = [max(r - 0.5 * lft, lft - 0.5 * r) for r, lft in zip(right, left, strict=True)]
    assert out["auc"] == pytest.approx(roc_auc(labels, study))
    assert out["n_women"] == 40 and out["n_abnormal"] == sum(labels)
    lo, hi = out["ci95"]
    assert lo <= out["auc"] <= hi and hi - lo > 0


def test_woman_auc_interval_widens_with_fewer_women():
    rng = np.random.default_rng(2)
    labels = [int(v) for v in rng.random(120) < 0.5]
    right = [0.4 + 0.15 * ab + 0.3 * rng.random() for ab in labels]
    left = [0.4 + 0.3 * rng.random() for _ in labels]
    wide = woman_auc(_rows(right[:30], left[:30], labels[:30]), 0.5, n_boot=400)["ci95"]
    narrow = woman_auc(_rows(right, left, labels), 0.5, n_boot=400)["ci95"]
    assert wide[1] - wide[0] > narrow[1] - narrow[0]


def test_paired_difference_of_identical_arms_is_zero_and_of_a_better_arm_is_positive():
    rng = np.random.default_rng(3)
    labels = [int(v) for v in rng.random(60) < 0.5]
    left = [0.3 + 0.1 * rng.random() for _ in labels]
    weak = [0.3 + 0.05 * ab + 0.2 * rng.random() for ab in labels]
    strong = [0.3 + 0.5 * ab + 0.2 * rng.random() for ab in labels]
    same = paired_auc_difference(_rows(weak, left, labels), _rows(weak, left, labels), 0.5, n_boot=200)
    assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0]
    better = paired_auc_difference(_rows(weak, left, labels), _rows(strong, left, labels), 0.5, n_boot=300)
    assert better["difference"] > 0 and better["ci95"][0] > 0
    with pytest.raises(ValueError, match="same women"):
        paired_auc_difference(_rows(weak, left, labels), _rows(weak[:-1], left[:-1], labels[:-1]), 0.5)
