"""Operating points per woman: the box's own aggregation, replayed over the release's CV women."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.inference.triage import NO_SUSPICIOUS, PRIORITY, REVIEW, ViewScore, aggregate, study_score
from models.errors import ReleaseError
from models.operating_points import choose_points, woman_level, woman_studies
from models.release_files import OperatingPoints, load_release, suspicion

RELEASES = sorted(p for p in (Path(__file__).resolve().parents[2] / "models" / "release").glob("*")
                  if (p / "cv_predictions.json").exists() and (p / "manifest.json").exists())
MIAS_VIEWS = (("L", "MLO"), ("R", "MLO"))


def replay(folder: Path) -> tuple[np.ndarray, list[str]]:
    """Each CV woman's triage level, written out here from the rows (not through models.operating_points):
    her two MLO views, each against the other breast with the release's beta, through the box's aggregate."""
    rel = load_release(folder)
    pts = rel.operating_points
    by: dict[str, list[dict]] = {}
    for r in json.loads((folder / "cv_predictions.json").read_text()):
        by.setdefault(r["woman"], []).append(r)
    y, levels = [], []
    for rows in by.values():
        assert len(rows) == 2
        views = []
        for r, other in ((rows[0], rows[1]), (rows[1], rows[0])):
            side = "R" if int(r["ref"][3:]) % 2 else "L"
            views.append(ViewScore(r["ref"], side, "MLO", r["p_abnormal"], r["p_malignant"],
                                   suspicion(r["p_abnormal"], other["p_abnormal"], pts.beta, pts.fallback_p_other), 0, 0, ""))
        assert {v.laterality for v in views} == {"L", "R"}
        t = aggregate(views, [], pts, required=MIAS_VIEWS)
        assert t.status == "done"
        y.append(max(r["abnormal"] for r in rows))
        levels.append(t.triage)
    return np.array(y), levels


@pytest.mark.parametrize("folder", RELEASES, ids=[p.name for p in RELEASES])
def test_box_triage_of_the_cv_women_matches_the_cards_woman_level_figures(folder):
    info = json.loads((folder / "model.json").read_text())
    wl = info["woman_level"]
    y, levels = replay(folder)
    lv = np.array(levels)
    assert wl["n_women"] == len(y) and wl["n_abnormal"] == int(y.sum())
    assert wl["triage_counts"] == {t: levels.count(t) for t in (NO_SUSPICIOUS, REVIEW, PRIORITY)}
    assert wl["sensitivity_review"] == pytest.approx(np.mean(lv[y == 1] != NO_SUSPICIOUS))
    assert wl["specificity_review"] == pytest.approx(np.mean(lv[y == 0] == NO_SUSPICIOUS))
    assert wl["sensitivity_priority"] == pytest.approx(np.mean(lv[y == 1] == PRIORITY))
    assert wl["specificity_priority"] == pytest.approx(np.mean(lv[y == 0] != PRIORITY))
    # the targets the thresholds were chosen for, per woman
    assert wl["sensitivity_review"] >= 0.85 and wl["specificity_priority"] >= 0.90
    assert levels.count(NO_SUSPICIOUS) > 0  # image-level points sent every one of the 129 women to review
    assert wl["experimental"] is True and "women" in wl["data"]
    lo, hi = wl["auc_ci95"]
    assert lo < wl["auc"] < hi
    card = (folder / "MODEL_CARD.md").read_text()
    for v in ("sensitivity_review", "specificity_review", "sensitivity_priority", "specificity_priority"):
        assert f"{100 * wl[v]:.0f}% (" in card, v
    assert f"no suspicious finding {wl['triage_counts'][NO_SUSPICIOUS]}, review {wl['triage_counts'][REVIEW]}" in card
    assert "image-level sens." in card and "woman-level sens." in card


def test_model_json_woman_level_block_has_the_shape_the_kiosk_reads():
    folder = next(p for p in RELEASES if p.name == "0.1.0")
    wl = json.loads((folder / "model.json").read_text())["woman_level"]
    assert set(wl) == {"n_women", "n_abnormal", "auc", "auc_ci95", "sensitivity_review", "specificity_review",
                       "sensitivity_priority", "specificity_priority", "triage_counts", "data", "experimental"}
    assert wl["n_women"] == 129 and wl["data"].startswith("mini-MIAS")
    assert sum(wl["triage_counts"].values()) == 129


def test_the_old_image_level_points_are_what_sent_every_woman_to_review():
    """The defect, kept measurable: 0.1.0's first thresholds replayed per woman."""
    folder = next(p for p in RELEASES if p.name == "0.1.0")
    info = json.loads((folder / "model.json").read_text())
    old = info["woman_level_detail"]["image_level_points_replaced"]
    studies = woman_studies(json.loads((folder / "cv_predictions.json").read_text()), 0.5)
    wl = woman_level(studies, OperatingPoints(old["review"], old["priority"], 0.5), "x", n_boot=10)
    assert wl["triage_counts"][NO_SUSPICIOUS] == 0 and wl["specificity_review"] == 0.0
    assert old["woman_level_at_them"]["triage_counts"] == wl["triage_counts"]


def test_chosen_points_meet_their_targets_and_sit_between_women():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(40, int), np.ones(60, int)]
    s = np.r_[rng.normal(0, 1, 40), rng.normal(1, 1, 60)]
    review, priority = choose_points(y, s)
    assert np.mean(s[y == 1] >= review) >= 0.85 and np.mean(s[y == 0] < priority) >= 0.90
    assert review not in s and priority not in s and review <= priority
    # as tight as the targets allow: past the next woman's score either way, the target is missed
    assert np.mean(s[y == 1] > s[s > review].min()) < 0.85
    assert np.mean(s[y == 0] < s[s < priority].max()) < 0.90
    with pytest.raises(ReleaseError, match="both normal and abnormal"):
        choose_points([1, 1], [0.1, 0.2])


def test_cv_rows_become_the_views_the_worker_would_score():
    rows = [{"ref": "mdb001", "woman": "1", "abnormal": 1, "p_abnormal": 0.8, "p_malignant": 0.1},
            {"ref": "mdb002", "woman": "1", "abnormal": 0, "p_abnormal": 0.2, "p_malignant": 0.1}]
    (st,) = woman_studies(rows, 0.5)
    assert st.abnormal == 1 and st.present == (("L", "MLO"), ("R", "MLO"))
    right = next(v for v in st.views if v.laterality == "R")
    assert right.suspicion == pytest.approx(0.8 - 0.5 * 0.2)
    assert study_score(st.views) == pytest.approx(0.7)
    # without a side column a woman's two images are her two breasts; a third cannot be placed
    unsided = [{"ref": f"x{i}", "woman": "1", "abnormal": 0, "p_abnormal": p} for i, p in enumerate((0.5, 0.3, 0.4))]
    (st,) = woman_studies(unsided[:2], 0.5)
    assert sorted(v.laterality for v in st.views) == ["L", "R"] and study_score(st.views) == pytest.approx(0.35)
    with pytest.raises(ReleaseError, match="side"):
        woman_studies(unsided, 0.5)


def test_a_new_release_gets_the_same_woman_level_selection_as_the_rederived_one():
    """release_build calls derive() on a model.json without thresholds: same points, same figures, no 'replaced'."""
    from models.operating_points import derive

    folder = next(p for p in RELEASES if p.name == "0.1.0")
    info = json.loads((folder / "model.json").read_text())
    fresh = {**info, "operating_points": {k: info["operating_points"][k] for k in ("beta", "fallback_p_other")}}
    for k in ("woman_level", "woman_level_detail"):
        fresh.pop(k)
    got = derive(json.loads((folder / "cv_predictions.json").read_text()), fresh, info["woman_level"]["data"], checks=False)
    assert got["operating_points"]["review"] == info["operating_points"]["review"]
    assert got["operating_points"]["priority"] == info["operating_points"]["priority"]
    assert got["woman_level"] == info["woman_level"]
    assert got["woman_level_detail"]["image_level_points_replaced"] is None


def test_rederiving_a_release_keeps_it_loadable_and_refuses_a_signed_one(tmp_path):
    import shutil

    from models.operating_points import rederive

    src = next(p for p in RELEASES if p.name == "0.1.0")
    copy = tmp_path / "0.1.0"
    shutil.copytree(src, copy)
    (copy / "manifest.sig").unlink()  # the shipped release is signed; re-deriving starts from the unsigned build
    before = json.loads((copy / "model.json").read_text())
    info = rederive(copy, n_boot=2000)
    assert info["woman_level"] == before["woman_level"]  # the committed release is what its own predictions give
    rel = load_release(copy)  # manifest rewritten over the new files
    assert rel.operating_points.review == before["operating_points"]["review"]
    (copy / "manifest.sig").write_text("c2lnbmF0dXJl\n")
    with pytest.raises(ReleaseError, match="coordinator sign it again"):
        rederive(copy)


def test_woman_figures_count_women_and_resample_them():
    from models.operating_points import summarize_women

    y = [1, 1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.4, 0.1, 0.5, 0.3, 0.2, 0.0]
    levels = [PRIORITY, REVIEW, REVIEW, NO_SUSPICIOUS, REVIEW, NO_SUSPICIOUS, NO_SUSPICIOUS, NO_SUSPICIOUS]
    m = summarize_women(y, s, levels, [f"w{i}" for i in range(8)], n_boot=300)
    assert (m["n"], m["n_abnormal"]) == (8, 4)
    assert m["sensitivity_review"] == 0.75 and m["specificity_review"] == 0.75
    assert m["sensitivity_priority"] == 0.25 and m["specificity_priority"] == 1.0
    assert m["triage_counts"] == {NO_SUSPICIOUS: 4, REVIEW: 3, PRIORITY: 1}
    assert m["auc"] == pytest.approx(12 / 16)
    lo, hi = m["sensitivity_review_ci95"]
    assert 0 <= lo < 0.75 < hi <= 1


def test_the_box_triages_with_the_very_functions_the_thresholds_were_chosen_with():
    """The rule lives in models.triage_rule; the box's import point and the operating points use that one object, not a copy."""
    import models.operating_points as op
    import models.triage_rule as rule
    from edge_agent.inference import triage as box

    for name in ("aggregate", "study_score", "first_by_view", "other_breast", "ViewScore"):
        assert getattr(box, name) is getattr(rule, name) is getattr(op, name)
