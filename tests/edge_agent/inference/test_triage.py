import pytest

from edge_agent.inference.triage import (
    NO_SUSPICIOUS,
    PRIORITY,
    REVIEW,
    ViewScore,
    aggregate,
    first_by_view,
    missing_views,
    other_breast,
    study_score,
)
from models.release_files import OperatingPoints

POINTS = OperatingPoints(review=0.3, priority=0.7)


def view(lat, v, p, m=0.1):
    return ViewScore(f"sop-{lat}{v}", lat, v, min(1.0, p + 0.05), m, p, 10, 20, "0" * 64)


def four(l_cc=0.1, l_mlo=0.1, r_cc=0.1, r_mlo=0.1):
    return [view("L", "CC", l_cc), view("L", "MLO", l_mlo), view("R", "CC", r_cc), view("R", "MLO", r_mlo)]


def test_one_suspicious_view_makes_its_breast_and_the_study_suspicious():
    t = aggregate(four(r_mlo=0.8), [], POINTS)
    assert t.status == "done" and t.triage == PRIORITY
    assert t.breast_scores["R"]["suspicion"] == 0.8 and t.breast_scores["L"]["suspicion"] == 0.1
    assert t.study_score == 0.8


def test_categories_follow_the_operating_points():
    assert aggregate(four(), [], POINTS).triage == NO_SUSPICIOUS
    assert aggregate(four(l_cc=0.3), [], POINTS).triage == REVIEW
    assert aggregate(four(l_cc=0.69), [], POINTS).triage == REVIEW
    assert aggregate(four(l_cc=0.7), [], POINTS).triage == PRIORITY


def test_missing_or_unreadable_views_give_incomplete_not_a_guess():
    t = aggregate(four()[:3], [], POINTS)
    assert t.status == "incomplete" and t.triage is None and t.study_score is None
    assert t.reasons == ("view R-MLO missing",)
    t = aggregate(four(), ["L-CC: image could not be decoded"], POINTS)
    assert t.status == "incomplete" and "unreadable: L-CC" in t.reasons[0]


def test_repeat_views_count_with_their_most_suspicious_image():
    t = aggregate(four() + [view("L", "CC", 0.75)], [], POINTS)
    assert t.triage == PRIORITY


def test_missing_views_lists_in_screening_order():
    assert missing_views([("L", "CC")]) == ["L-MLO", "R-CC", "R-MLO"]


def test_a_study_is_scored_over_the_views_it_is_required_to_have():
    """Evaluation on two-view data (mini-MIAS MLO) runs the same aggregate, requiring only those views."""
    mlo = [view("L", "MLO", 0.5), view("R", "MLO", 0.1)]
    assert aggregate(mlo, [], POINTS).status == "incomplete"
    t = aggregate(mlo, [], POINTS, required=(("L", "MLO"), ("R", "MLO")))
    assert t.status == "done" and t.triage == REVIEW and t.study_score == 0.5
    assert study_score(mlo) == 0.5 and study_score([]) is None


def test_each_view_is_paired_with_the_first_image_of_the_same_view_of_the_other_breast():
    p = first_by_view([("L", "CC", 0.2), ("L", "CC", 0.9), ("R", "CC", 0.4), ("R", "MLO", 0.6)])
    assert other_breast(p, "R", "CC") == 0.2  # a repeat view does not replace the first
    assert other_breast(p, "L", "MLO") == 0.6 and other_breast(p, "R", "MLO") is None
    assert other_breast(p, None, "CC") is None and other_breast(p, "?", "CC") is None


def test_the_other_breast_is_subtracted_per_view_before_the_maximum():
    """Pinned choice (measured in the model card): a CC view is compared with the other CC, not with the other
    breast's strongest view. Here the right MLO looks suspicious in both breasts (a projection effect) and the
    left CC alone carries a finding: per view the CC finding stands out; after the maximum it would not."""
    p = {("L", "CC"): 0.6, ("L", "MLO"): 0.7, ("R", "CC"): 0.1, ("R", "MLO"): 0.7}
    views = [view(lat, v, p[(lat, v)] - 0.5 * p[("R" if lat == "L" else "L", v)]) for lat, v in p]
    # after the maximum it would be max(0.7 - 0.5 * 0.7, 0.7 - 0.5 * 0.7) = 0.35, below the review point
    assert study_score(views) == pytest.approx(0.55)
    assert aggregate(views, [], POINTS).triage == REVIEW
