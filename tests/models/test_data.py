"""Folds are by woman: one woman in two folds would leak her other breast."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from models.data import Record, read_folder, woman_folds
from models.errors import DatasetError


def _fake_records(n_women: int) -> list[Record]:
    recs = []
    for w in range(n_women):
        for side in ("R", "L"):
            recs.append(Record(ref=f"w{w}{side}", path=Path("x.png"), abnormal=int(w % 3 == 0 and side == "L"),
                               malignant=int(w % 6 == 0 and side == "L"), woman=str(w), side=side))
    return recs


def _women_per_fold(records, folds):
    seen = defaultdict(set)
    for r, f in zip(records, folds, strict=False):
        seen[r.woman].add(f)
    return seen


def test_every_woman_lands_in_exactly_one_fold():
    recs = _fake_records(40)
    folds = woman_folds(recs, k=5, seed=3)
    leaked = {w: f for w, f in _women_per_fold(recs, folds).items() if len(f) > 1}
    assert not leaked, f"women split across folds: {leaked}"


def test_leak_check_catches_an_image_level_split():
    """The check above must be able to fail: an image-level split does leak."""
    recs = _fake_records(10)
    image_level = [i % 5 for i in range(len(recs))]
    assert any(len(f) > 1 for f in _women_per_fold(recs, image_level).values())


def test_folds_are_balanced_and_stratified():
    recs = _fake_records(50)
    folds = woman_folds(recs, k=5)
    sizes = [folds.count(f) for f in range(5)]
    assert max(sizes) - min(sizes) <= 2
    malignant_women = [{r.woman for r, f in zip(recs, folds, strict=False) if f == k and r.malignant} for k in range(5)]
    assert all(len(m) >= 1 for m in malignant_women)


def test_real_folds_do_not_leak_women(mias_records):
    folds = woman_folds(mias_records, k=5)
    assert all(len(f) == 1 for f in _women_per_fold(mias_records, folds).values())
    assert len({r.woman for r in mias_records}) == 129


def test_real_labels_are_read_with_y_from_the_top(mias_records):
    rec = next(r for r in mias_records if r.ref == "mdb001")
    assert rec.lesions and rec.lesions[0].y == pytest.approx(299.5)  # 1024 - 425, halved


def test_folder_without_index_says_what_is_missing(tmp_path):
    with pytest.raises(DatasetError, match="images.csv"):
        read_folder(tmp_path)


def test_folder_missing_patient_pair_is_rejected(tmp_path):
    (tmp_path / "images.csv").write_text("ref,file,label_abnormal,label_malignant\na,a.png,0,0\n")
    with pytest.raises(DatasetError, match="patient_pair"):
        read_folder(tmp_path)
