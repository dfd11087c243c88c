"""What the doctor reads (issue 10, section 4), through the routes: scores, the model's limits, feedback, the letter, incomplete studies."""

from __future__ import annotations

import io
import re
import sqlite3
import time

import pytest
from litestar.testing import TestClient
from pypdf import PdfReader

from edge_agent.schema import MIGRATIONS
from edge_agent.store import APPLICATION_ID, _statements, open_database
from kiosk_ui import synthetic
from kiosk_ui.i18n import catalog
from kiosk_ui.model_info import parse
from kiosk_ui.records import TRIAGES, Problem, study_problems
from kiosk_ui.wording import problem_summary, problem_text

from .conftest import Kiosk, csrf_of, message_of, sign_in

WOMAN_LEVEL = {"n_women": 129, "n_abnormal": 60, "auc": 0.7012, "auc_ci95": [0.61, 0.79], "sensitivity_review": 0.8571,
               "specificity_review": 0.3473, "sensitivity_priority": 0.3077, "specificity_priority": 0.8982,
               "triage_counts": {"no_suspicious_finding": 30, "radiologist_review": 60, "priority_radiologist_review": 39},
               "data": "mini-MIAS (taranmış film), kadın düzeyinde 5 katlı çapraz doğrulama", "experimental": True}


def _pdf_text(client: TestClient, uid: str) -> str:
    r = client.get(f"/studies/{uid}/referral.pdf")
    assert r.status_code == 200
    return " ".join(" ".join(p.extract_text().split()) for p in PdfReader(io.BytesIO(r.content)).pages)


def _incomplete(kiosk: Kiosk) -> str:
    """A study of three views (no left MLO) that the worker closed as incomplete: its views still carry scores."""
    uid = synthetic.ingest_study(kiosk.services.ingest, seed=5, views=3)
    synthetic.write_result(kiosk.services.ingest, uid, triage=None, score=0.7, status="incomplete")
    kiosk.box.db.execute("UPDATE infer_results SET reasons = ? WHERE study_uid = ?", ['["view L-MLO missing"]', uid])
    return uid


# -- scores ------------------------------------------------------------------------------------------
def test_category_comes_first_and_every_number_is_a_score_in_turkish_decimals(doctor: TestClient, kiosk: Kiosk):
    html = doctor.get(f"/studies/{kiosk.studies['priority']}").text
    assert html.index('id="triage"') < html.index('id="study-score"')
    assert re.search(r'id="study-score">0,91<', html) and "Sağ 0,91 · Sol 0,55" in html
    assert "karşı meme ile karşılaştırmalı şüphe skoru" in html and "Anormallik olasılığı" not in html
    assert "radyolog değerlendirmesi 0,30 · öncelikli 0,60" in html
    assert re.findall(r'class="view-score">([^<]+)<', html) == ["0,91", "0,55", "0,55", "0,55"]
    en = doctor.get("/lang/en", params={"next": f"/studies/{kiosk.studies['priority']}"}).text
    assert 'id="study-score">0.91<' in en


# -- the model's measured performance ---------------------------------------------------------------
def test_without_a_woman_level_block_the_page_says_there_is_no_measurement(doctor: TestClient, kiosk: Kiosk):
    html = doctor.get(f"/studies/{kiosk.studies['priority']}").text
    assert "performans ölçümü yok" in html and 'id="model-experimental"' in html
    assert "Türkiye&#39;deki kadınlarda ve dijital mamografilerde doğrulanmamıştır" in html
    text = _pdf_text(doctor, kiosk.studies["priority"])
    assert "performans ölçümü yok" in text and "deneysel model" in text


def test_measured_performance_is_shown_in_plain_turkish_and_the_model_marked_experimental(doctor: TestClient, kiosk: Kiosk):
    synthetic.write_release_info(kiosk.settings.models_dir, WOMAN_LEVEL)
    html = doctor.get(f"/studies/{kiosk.studies['priority']}").text
    perf = re.search(r'id="model-performance">(.*?)</ul>', html, re.S)[1]
    assert "129 kadın, 60 kadında bulgu var" in perf and "mini-MIAS (taranmış film)" in perf
    assert "duyarlılık %86" in perf and "özgüllük %35" in perf and "duyarlılık %31, özgüllük %90" in perf
    assert "AUC): 0,70 (%95 güven aralığı 0,61–0,79)" in perf and "doğrulanmamıştır" in perf
    assert 'id="model-experimental">Deneysel model<' in html
    text = _pdf_text(doctor, kiosk.studies["priority"])
    assert "duyarlılık %86" in text and "Yapay zekâ ön değerlendirmesi (deneysel model)" in text
    synthetic.write_release_info(kiosk.settings.models_dir, {**WOMAN_LEVEL, "experimental": False})
    assert 'id="model-experimental"' not in doctor.get(f"/studies/{kiosk.studies['priority']}").text


def test_a_malformed_woman_level_block_counts_as_no_measurement():
    info = {"operating_points": {"review": 0.1, "priority": 0.4}, "woman_level": {"n_women": "many"}}
    m = parse("x", info)
    assert m.woman_level is None and m.experimental and m.review == 0.1


# -- feedback ------------------------------------------------------------------------------------------
def test_nothing_is_preselected_in_the_feedback_form(doctor: TestClient, kiosk: Kiosk):
    html = doctor.get(f"/studies/{kiosk.studies['priority']}").text
    form = re.search(r'<form method="post" action="/studies/[^"]+/feedback".*?</form>', html, re.S)[0]
    assert "checked" not in form and form.count('name="agrees"') == 2


def test_a_family_doctor_enters_bi_rads_only_from_the_radiology_report_and_it_is_labelled(doctor: TestClient, kiosk: Kiosk):
    uid = kiosk.studies["priority"]
    token = csrf_of(doctor.get(f"/studies/{uid}").text)
    r = doctor.post(f"/studies/{uid}/feedback", data={"_csrf": token, "agrees": "yes", "birads": "4", "density": "C"})
    assert r.status_code == 400 and "radyoloji raporundan aktarıyorum" in message_of(r.text) and kiosk.count("kiosk_feedback") == 0
    r = doctor.post(f"/studies/{uid}/feedback", data={"_csrf": token, "agrees": "yes", "birads": "4", "density": "C", "from_report": "yes",
                                                       "notes": "Ele gelen kitle yok."})
    assert r.status_code == 200
    assert kiosk.box.db.execute("SELECT birads, density, category_source FROM kiosk_feedback").fetchall() == [(4, "C", "radiology_report")]
    assert "BI-RADS 4, yoğunluk C (radyoloji raporundan girildi: Dr. Zeynep Işık)" in r.text
    text = _pdf_text(doctor, uid)
    assert "radyoloji raporundan girildi: Dr. Zeynep Işık" in text and "Ele gelen kitle yok." in text
    assert "Hekim değerlendirmesi" not in text


def test_a_family_doctors_agreement_alone_prints_no_bi_rads(doctor: TestClient, kiosk: Kiosk):
    uid = kiosk.studies["priority"]
    token = csrf_of(doctor.get(f"/studies/{uid}").text)
    doctor.post(f"/studies/{uid}/feedback", data={"_csrf": token, "agrees": "no", "notes": "Sağ memede ele gelen kitle."})
    text = _pdf_text(doctor, uid)
    assert "Sağ memede ele gelen kitle." in text and "BI-RADS" not in text


def test_a_radiologist_account_records_its_own_reading(client: TestClient, kiosk: Kiosk):
    assert sign_in(client, "radyolog").status_code == 303
    uid = kiosk.studies["priority"]
    html = client.get(f"/studies/{uid}").text
    assert 'name="from_report"' not in html and 'id="report-entry"' in html  # a radiologist types the report, copies nothing
    r = client.post(f"/studies/{uid}/report", data={"_csrf": csrf_of(html), "birads": "5", "density": "D", "recommendation": "biopsy"},
                    follow_redirects=False)
    assert r.status_code == 303
    assert kiosk.box.db.execute("SELECT birads, density, recommendation, source, entered_by FROM kiosk_radiology_reports").fetchall() == [
        (5, "D", "biopsy", "radiologist", "radyolog")]
    assert "BI-RADS 5, yoğunluk D (radyolog Dr. İsmail Kaya tarafından girildi)" in _pdf_text(client, uid)


def test_old_family_doctor_bi_rads_rows_are_kept_but_never_printed(tmp_path):
    """Kiosk migration 3 on a database that holds a row from the old form (BI-RADS picked by the family doctor)."""
    path = tmp_path / "box.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("CREATE TABLE schema_migrations (component TEXT NOT NULL, version INTEGER NOT NULL, applied_at REAL NOT NULL,"
                 " PRIMARY KEY (component, version))")
    for component, scripts in MIGRATIONS.items():
        for version, script in enumerate(scripts, start=1):
            if (component, version) == ("kiosk", 3):
                break
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (component, version, time.time()))
    conn.execute("INSERT INTO kiosk_feedback (study_uid, username, role, agrees, birads, density, notes, created_at)"
                 " VALUES ('1.2', 'doktor', 'doctor', 1, 4, 'C', 'not', 1.0), ('1.2', 'radyolog', 'radiologist', 1, 2, 'B', '', 2.0)")
    conn.commit()
    conn.close()
    db = open_database(path)
    rows = db.execute("SELECT role, birads, density, category_source FROM kiosk_feedback ORDER BY id").fetchall()
    assert rows == [("doctor", 4, "C", "legacy"), ("radiologist", 2, "B", "radiologist")]
    with pytest.raises(sqlite3.IntegrityError):  # a category without its source cannot be written any more
        db.execute("INSERT INTO kiosk_feedback (study_uid, username, role, agrees, birads, density, created_at)"
                   " VALUES ('1.2', 'x', 'doctor', 1, 3, 'A', 1.0)")
    db.conn.close()


# -- the referral letter -------------------------------------------------------------------------------
def test_referral_is_a_letter_to_the_radiologist_with_the_disclaimer_beside_the_result(doctor: TestClient, kiosk: Kiosk):
    r = doctor.get(f"/studies/{kiosk.studies['priority']}/referral.pdf")
    page = PdfReader(io.BytesIO(r.content)).pages[0]
    chunks: list[tuple[str, float, float, float]] = []
    page.extract_text(visitor_text=lambda text, cm, tm, font, size: chunks.append((text, size * tm[0], tm[4], tm[5])) if text.strip() else None)
    text = " ".join(" ".join(page.extract_text().split()).split())
    assert "Sayın Radyoloji Uzmanı," in text and "Yapay zekâ ön değerlendirmesi" in text
    assert "Bulgular" not in text and "Ne yapmalı" not in text and "hastayı telaşlandırmadan" not in text
    category = next(c for c in chunks if c[0].startswith("Öncelikli radyolog değerlendirmesi"))
    disclaimer = next(c for c in chunks if c[0].startswith("Bu bölüm yapay zekâ ön"))
    assert disclaimer[1] >= 10  # readable: body size, not 8 pt
    assert disclaimer[2] > category[2] + 200 and abs(disclaimer[3] - category[3]) < 20  # beside the result, not at the foot
    assert min(c[1] for c in chunks) >= 9  # nothing smaller than 9 pt on the letter


# -- no suspicious finding, heatmaps --------------------------------------------------------------------
def test_no_suspicious_finding_says_the_images_still_go_to_the_radiologist(doctor: TestClient, kiosk: Kiosk):
    html = doctor.get(f"/studies/{kiosk.studies['normal']}").text
    assert "yine de radyoloğa gider" in html and "olağan tarama programına devam edin" not in html
    assert 'class="overlay"' not in html and 'id="heatmap-none"' in html and 'id="heatmap-toggle"' not in html


def test_heatmaps_are_drawn_only_on_views_at_or_above_the_review_threshold_with_a_legend(doctor: TestClient, kiosk: Kiosk):
    uid = synthetic.ingest_study(kiosk.services.ingest, seed=4)
    synthetic.write_result(kiosk.services.ingest, uid, triage="radiologist_review", score=0.4)  # one view 0.40, three 0.24
    html = doctor.get(f"/studies/{uid}").text
    assert html.count('class="overlay"') == 1 and 'id="heatmap-legend"' in html and "eşiğine (0,30)" in html
    pdf = PdfReader(io.BytesIO(doctor.get(f"/studies/{uid}/referral.pdf").content))
    assert "eşiğine (0,30) ulaşan" in " ".join(pdf.pages[0].extract_text().split())


def test_a_result_from_an_unknown_release_draws_no_heatmap(doctor: TestClient, kiosk: Kiosk):
    kiosk.box.db.execute("UPDATE infer_results SET model_version = 'gone-1' WHERE study_uid = ?", [kiosk.studies["priority"]])
    html = doctor.get(f"/studies/{kiosk.studies['priority']}").text
    assert 'class="overlay"' not in html and "eşikleri bilinmediği" in html and "performans ölçümü yok" in html


# -- incomplete studies ---------------------------------------------------------------------------------
def test_an_incomplete_study_says_what_is_missing_and_shows_no_result(doctor: TestClient, kiosk: Kiosk):
    uid = _incomplete(kiosk)
    html = doctor.get(f"/studies/{uid}").text
    assert re.search(r'id="incomplete-problems"><li>Sol MLO eksik, çekimi tamamlayın.</li></ul>', html)
    assert "Eksik çekim: yapay zekâ sonucu yok" in html
    for absent in ('id="study-score"', 'id="breast-scores"', "view-score", 'class="overlay"', "0,70", "view L-MLO missing"):
        assert absent not in html, absent


def test_an_incomplete_study_tops_the_worklist_in_its_own_colour(doctor: TestClient, kiosk: Kiosk):
    uid = _incomplete(kiosk)
    html = doctor.get("/worklist").text
    first = re.search(r'<tr class="row ([^"]+)" data-study="([^"]+)"[^>]*>(.*?)</tr>', html, re.S)
    assert first[1] == "row-incomplete flow-new" and first[2] == uid
    assert "Eksik çekim: Sol MLO eksik" in first[3] and "0,70" not in first[3]
    assert re.findall(r'class="name">([^<]+)<', html)[1] == "Ayşe ÇELİK"  # then priority, as before


def test_no_agreement_is_recorded_for_a_study_without_a_result(doctor: TestClient, kiosk: Kiosk):
    uid = _incomplete(kiosk)
    html = doctor.get(f"/studies/{uid}").text
    assert 'id="feedback-none"' in html and 'name="agrees"' not in html
    r = doctor.post(f"/studies/{uid}/feedback", data={"_csrf": csrf_of(html), "agrees": "yes"})
    assert r.status_code == 400 and "sonucu yok" in message_of(r.text) and kiosk.count("kiosk_feedback") == 0


def test_every_printout_of_an_incomplete_study_says_so(doctor: TestClient, kiosk: Kiosk):
    uid = _incomplete(kiosk)
    for query in ("", "?print=1"):
        r = doctor.get(f"/studies/{uid}/referral.pdf{query}")
        text = " ".join(PdfReader(io.BytesIO(r.content)).pages[0].extract_text().split())
        assert "EKSİK ÇEKİM" in text and "Sol MLO eksik." in text and "yapay zekâ sonucu ve skor yok" in text
        assert "Çekim skoru" not in text and "0,70" not in text


# -- pure wording -----------------------------------------------------------------------------------------
def test_problems_come_from_the_stored_views_and_the_workers_unreadable_reasons():
    present = [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")]
    reasons = ["view L-MLO missing", "unreadable: L-MLO: image could not be decoded (ValueError: x)"]
    got = study_problems("incomplete", reasons, present)
    assert got == (Problem("unreadable", "L", "MLO"),)  # arrived but unreadable: said once, as unreadable
    t = catalog("tr")
    assert problem_text(got[0], t) == "Sol MLO okunamadı; görüntüyü mamografi cihazından yeniden gönderin ya da çekimi tekrarlayın."
    assert problem_summary(study_problems("incomplete", [], present[:2]), t) == "Sağ MLO eksik, Sol MLO eksik"
    assert study_problems("done", reasons, present) == () and study_problems("incomplete", [], present) == (Problem("other"),)


def test_every_wording_key_built_at_run_time_is_in_both_catalogs():
    keys = {f"side.{s}" for s in ("L", "R", "unknown")} | {f"referral.triage.{t}" for t in TRIAGES}
    keys |= {f"incomplete.{k}{x}" for k in ("missing", "unreadable", "other") for x in ("", "_referral")}
    keys |= {f"incomplete.short_{k}" for k in ("missing", "unreadable", "other")}
    for lang in ("tr", "en"):
        t = catalog(lang)
        assert not [k for k in keys if k not in t.strings], lang
