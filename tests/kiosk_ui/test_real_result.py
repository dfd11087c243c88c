"""The kiosk showing what the real inference worker wrote (not synthetic rows): the contract between the two."""

import re

from edge_agent.inference.worker import result_of
from kiosk_ui.i18n import decimal

from .conftest import run_real_model


def _num(text: str) -> float:
    return float(text.replace(",", "."))


def test_study_triaged_by_the_real_model_shows_one_consistent_score_everywhere(kiosk, doctor):
    study = run_real_model(kiosk)
    result = result_of(kiosk.box.db, study)
    assert result["status"] == "done"

    page = doctor.get(f"/studies/{study}")
    assert page.status_code == 200, page.text[:500]
    html = page.text
    assert result["model_version"] in html
    # The category comes first; the number beside it is called a score, relative to the other breast, Turkish decimals.
    assert html.index('id="triage"') < html.index('id="study-score"')
    assert "karşı meme ile karşılaştırmalı şüphe skoru" in html and "olasılığı" not in html
    study_score = _num(re.search(r'id="study-score">([^<]+)<', html)[1])
    breasts = {side: _num(v) for side, v in re.findall(r"(Sağ|Sol) (-?\d+,\d\d)", re.search(r'id="breast-scores">([^<]+)<', html)[1])}
    views = [(m[0], _num(m[1])) for m in re.findall(r'<b>(Sağ|Sol) (?:CC|MLO)</b> · şüphe skoru <span class="view-score">([^<]+)<', html)]
    assert len(views) == 4 and set(breasts) == {"Sağ", "Sol"}
    # the study score is the highest breast score, each breast score its highest view score: the same quantity
    for side, score in breasts.items():
        assert score == max(s for sd, s in views if sd == side)
    assert study_score == max(breasts.values()) == _num(decimal(result["study_score"], "tr"))
    for view in result["views"]:
        assert doctor.get(f"/studies/{study}/views/{view['sop_uid']}/heatmap.png").status_code == 200
    assert doctor.get(f"/studies/{study}/referral.pdf").status_code == 200


def test_a_partial_study_through_the_real_worker_shows_what_is_missing_and_no_score(kiosk, doctor):
    study = run_real_model(kiosk, views=3)
    result = result_of(kiosk.box.db, study)
    assert result["status"] == "incomplete" and result["views"]  # the worker scored the views it had
    html = doctor.get(f"/studies/{study}").text
    assert "Sol MLO eksik, çekimi tamamlayın." in html
    assert 'id="study-score"' not in html and 'id="breast-scores"' not in html and "view-score" not in html
    assert 'class="overlay"' not in html and "view L-MLO missing" not in html
