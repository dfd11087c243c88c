from edge_agent.inference.triage import NO_SUSPICIOUS, PRIORITY, REVIEW, ViewScore, aggregate, missing_views
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
