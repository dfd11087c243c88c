"""Which studies are labels: a radiologist's word or a biopsy, never the family doctor's agreement; images in memory only."""

from __future__ import annotations

import pytest

from edge_agent.learning.examples import Assessment, choose_label, examples, held_back, label_of, split, study_images
from edge_agent.store import open_database


@pytest.mark.parametrize("birads, biopsy, label", [
    (1, None, 0), (2, None, 0), (3, None, None), (0, None, None), (4, None, 1), (5, None, 1), (6, None, 1),
    (4, "benign", 0), (1, "malignant", 1), (None, None, None), (0, "benign", 0),
])
def test_label_of_birads_and_biopsy(birads, biopsy, label):
    assert label_of(birads, biopsy) == label


def test_a_biopsy_overrides_later_categories_and_the_latest_usable_category_wins():
    assert choose_label([Assessment("s", 4, None, 1.0), Assessment("s", 4, "benign", 2.0), Assessment("s", 5, None, 3.0)]) == (0, 2.0)
    assert choose_label([Assessment("s", 4, None, 1.0), Assessment("s", 0, None, 2.0)]) == (1, 1.0)
    assert choose_label([Assessment("s", 2, None, 1.0), Assessment("s", 4, None, 2.0)]) == (1, 2.0)
    assert choose_label([Assessment("s", 3, None, 1.0)]) is None


def test_holding_back_is_by_woman_and_stable():
    women = [f"P{i:04d}" for i in range(2000)]
    share = sum(held_back(w, 0.25) for w in women) / len(women)
    assert 0.2 < share < 0.3
    assert [held_back(w, 0.25) for w in women] == [held_back(w, 0.25) for w in women]


def test_only_radiologist_assessed_studies_of_this_box_are_examples(clinic):
    db = open_database(clinic.home / "box.sqlite3")
    try:
        got = examples(db)
        assert {(e.study_uid, e.label) for e in got} == set(clinic.studies)  # not the doctor's agreement, legacy, BI-RADS 0
        train, hold = split(got, 0.25)
        assert not {e.woman for e in train} & {e.woman for e in hold}
        # the radiology report (kiosk_radiology_reports) with a biopsy result overrides the kiosk category
        uid, label = clinic.studies[1]
        assert label == 1
        db.execute("INSERT INTO kiosk_radiology_reports (study_uid, birads, density, recommendation, biopsy_result, source, entered_by,"
                   " created_at) VALUES (?, 4, 'B', 'biopsy', 'benign', 'radiology_report', 'tech', 1)", [uid])
        assert {e.study_uid: e.label for e in examples(db)}[uid] == 0
    finally:
        db.conn.close()


def test_study_images_are_decrypted_and_preprocessed_in_memory_only(clinic):
    from edge_agent.box import open_keystore
    from edge_agent.ingest.image_store import ImageStore
    from edge_agent.ingest.service import IngestPaths

    settings = clinic.settings()
    before = sorted(p for p in clinic.home.rglob("*") if p.is_file() and "box.sqlite3" not in p.name)
    db = open_database(settings.db_path)
    try:
        store = ImageStore(IngestPaths.of(settings).images, open_keystore(settings, interactive=False).master_key())
        got = study_images(db, store, clinic.studies[0][0], 128)
    finally:
        db.conn.close()
    assert got is not None and got.images.shape == (4, 128, 128) and got.images.max() <= 1.0
    assert sorted(got.views) == [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    after = sorted(p for p in clinic.home.rglob("*") if p.is_file() and "box.sqlite3" not in p.name)
    assert after == before  # nothing decrypted to disk
