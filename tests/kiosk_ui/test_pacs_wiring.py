"""The kiosk wired to the PACS link (issue 16): referral queues exports, the schedule form feeds the worklist, DICOMweb sits behind sign-in."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from litestar.testing import TestClient

from edge_agent.pacs import service as pacs
from kiosk_ui.app import create_app

from .conftest import Kiosk, csrf_of, make_kiosk, sign_in

CARE_TEAM = "HOSP_PACS@127.0.0.1:1"  # loopback, nothing listens: the export stays queued, which is what the page must show
RESEARCH = "RESEARCH@127.0.0.1:2"


@pytest.fixture
def pacs_kiosk(tmp_path: Path):
    k = make_kiosk(tmp_path / "home", pacs_destinations=f"{CARE_TEAM}/identified,{RESEARCH}/deidentified")
    yield k
    k.services.close()
    k.box.close()


@pytest.fixture
def pclient(pacs_kiosk: Kiosk):
    with TestClient(create_app(pacs_kiosk.settings, pacs_kiosk.services), base_url="http://kiosk.local") as c:
        yield c


def _signed_in(client: TestClient, user: str) -> TestClient:
    assert sign_in(client, user).status_code == 303
    return client


# -- referral -> PACS export ---------------------------------------------------------------------------
def test_referral_queues_the_study_to_the_care_team_pacs_once_and_the_study_page_shows_it(pclient: TestClient, pacs_kiosk: Kiosk):
    uid = pacs_kiosk.studies["priority"]
    client = _signed_in(pclient, "doktor")
    assert "pacs-state" not in client.get(f"/studies/{uid}").text  # nothing referred yet: no export line
    for _ in range(2):  # downloaded twice: still one export, one job
        r = client.get(f"/studies/{uid}/referral.pdf")
        assert r.status_code == 200 and r.content.startswith(b"%PDF")
    states = pacs.export_states(pacs_kiosk.box.db, uid)
    assert [(s.destination, s.state, s.requested_by) for s in states] == [(CARE_TEAM, "queued", "doktor")]  # identified only
    assert pacs_kiosk.count("jobs", "queue = 'pacs' AND state = 'ready'") == 1
    page = client.get(f"/studies/{uid}").text
    line = re.search(r'<li class="pacs-export" data-destination="([^"]+)" data-state="([^"]+)">([^<]+)</li>', page)
    assert line and line.group(1) == CARE_TEAM and line.group(2) == "queued"
    assert html.unescape(line.group(3)) == f"{CARE_TEAM}: sırada bekliyor" and "Hastane PACS&#39;ına gönderim" in page


def test_study_page_shows_export_state_in_english_when_asked(pclient: TestClient, pacs_kiosk: Kiosk):
    uid = pacs_kiosk.studies["priority"]
    client = _signed_in(pclient, "doktor")
    client.get(f"/studies/{uid}/referral.pdf")
    client.get("/lang/en")
    assert f"{CARE_TEAM}: queued</li>" in client.get(f"/studies/{uid}").text


def test_referral_without_pacs_configured_still_prints(client: TestClient, kiosk: Kiosk):
    uid = kiosk.studies["priority"]
    _signed_in(client, "doktor")
    assert client.get(f"/studies/{uid}/referral.pdf").content.startswith(b"%PDF")
    assert pacs.export_states(kiosk.box.db, uid) == [] and "pacs-state" not in client.get(f"/studies/{uid}").text


# -- schedule screening ----------------------------------------------------------------------------------
def _schedule(client: TestClient, **fields: str):
    csrf = csrf_of(client.get("/schedule").text)
    data = {"patient_id": "12345678901", "surname": "çelik", "given": "ayşe", "birth_date": "1971-03-09", "accession": "ACC001", "scheduled": ""}
    return client.post("/schedule", data={"_csrf": csrf, **data, **fields}, follow_redirects=False)


@pytest.mark.parametrize("user", ["teknisyen", "doktor", "yonetici"])
def test_schedule_form_adds_an_entry_the_worklist_serves_and_the_page_lists(pclient: TestClient, pacs_kiosk: Kiosk, user: str):
    client = _signed_in(pclient, user)
    today = pacs_kiosk.services.ingest.worklist.today()
    r = _schedule(client, scheduled=f"{today[:4]}-{today[4:6]}-{today[6:]}T09:30")
    assert r.status_code == 303, r.text
    entries = pacs.worklist_today(pacs_kiosk.services.ingest.worklist)
    assert [(e.patient_id, e.name, e.birth_date, e.accession, e.scheduled[8:]) for e in entries] == [
        ("12345678901", "ÇELİK^AYŞE", "19710309", "ACC001", "0930")]
    page = client.get(r.headers["location"]).text
    assert "Tarama çalışma listesine eklendi." in page
    row = re.search(r'<tr data-accession="ACC001" data-state="scheduled">(.*?)</tr>', page, re.S)
    assert row and "09:30" in row.group(1) and "Ayşe ÇELİK" in row.group(1) and "bekleniyor" in row.group(1)
    assert pacs_kiosk.box.db.execute("SELECT count(*) FROM kiosk_audit WHERE action = 'view_schedule'").fetchone()[0] >= 1


def test_schedule_form_refuses_in_turkish_and_keeps_what_was_typed(pclient: TestClient, pacs_kiosk: Kiosk):
    client = _signed_in(pclient, "teknisyen")
    r = _schedule(client, birth_date="1971-02-30", accession="A" * 17)
    assert r.status_code == 400
    assert "Doğum tarihi geçerli bir tarih olmalı." in r.text and "Kabul numarası 1-16 karakter olmalı" in r.text
    assert 'value="12345678901"' in r.text and "--birth-date" not in r.text
    r = _schedule(client, given="", accession="")
    assert r.status_code == 400 and "Soyadı ve adı ayrı ayrı yazın" in r.text and "Kabul numarası 1-16 karakter olmalı" in r.text
    r = _schedule(client, given="")
    assert r.status_code == 400 and "Soyadı ve adı ayrı ayrı yazın" in r.text
    assert _schedule(client).status_code == 303
    r = _schedule(client)  # same patient, same accession
    assert r.status_code == 400 and "zaten listede" in r.text
    assert len(pacs.worklist_today(pacs_kiosk.services.ingest.worklist)) == 1


def test_schedule_needs_a_permitted_role_and_the_token(pclient: TestClient, pacs_kiosk: Kiosk):
    client = _signed_in(pclient, "radyolog")
    assert client.get("/schedule").status_code == 403
    client.post("/logout", data={"_csrf": csrf_of(client.get("/worklist").text)})
    client = _signed_in(pclient, "teknisyen")
    r = client.post("/schedule", data={"_csrf": "forged", "patient_id": "1", "surname": "A", "given": "B", "birth_date": "1970-01-01",
                                        "accession": "X"}, follow_redirects=False)
    assert r.status_code in (400, 403)
    assert pacs.worklist_today(pacs_kiosk.services.ingest.worklist) == []


# -- DICOMweb ---------------------------------------------------------------------------------------------
def test_dicomweb_refuses_without_a_session_and_answers_a_signed_in_doctor(pclient: TestClient, pacs_kiosk: Kiosk):
    uid = pacs_kiosk.studies["priority"]
    for path in ("/dicomweb/studies", f"/dicomweb/studies/{uid}/series", f"/dicomweb/studies/{uid}"):
        r = pclient.get(path, follow_redirects=False)
        assert r.status_code == 401, path
        assert b"DICM" not in r.content and "ÇELİK" not in r.text
    client = _signed_in(pclient, "doktor")
    r = client.get("/dicomweb/studies", params={"StudyInstanceUID": uid})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/dicom+json")
    found = json.loads(r.content)
    assert len(found) == 1 and found[0]["0020000D"]["Value"] == [uid]
    r = client.get(f"/dicomweb/studies/{uid}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/related") and b"DICM" in r.content
    trail = pacs_kiosk.box.db.execute("SELECT actor, action FROM audit_log WHERE action LIKE 'dicomweb_%' ORDER BY seq").fetchall()
    assert [tuple(t) for t in trail] == [("doktor", "dicomweb_search"), ("doktor", "dicomweb_retrieve")]  # refused requests leave nothing


def test_dicomweb_refuses_a_role_without_study_access(pclient: TestClient, pacs_kiosk: Kiosk):
    client = _signed_in(pclient, "teknisyen")
    assert client.get("/dicomweb/studies", follow_redirects=False).status_code == 403


# -- glossary: the new pages stay Turkish ------------------------------------------------------------------
def test_no_english_on_the_turkish_schedule_and_export_pages(pclient: TestClient, pacs_kiosk: Kiosk):
    from .test_clinic_day import ALLOWED, ENGLISH, PKG, _visible_text

    en = json.loads((PKG / "i18n" / "en.json").read_text(encoding="utf-8"))
    tr = json.loads((PKG / "i18n" / "tr.json").read_text(encoding="utf-8"))
    english_sentences = {v for k, v in en.items() if v != tr[k] and len(v.split()) >= 2 and "{" not in v}
    client = _signed_in(pclient, "doktor")
    uid = pacs_kiosk.studies["priority"]
    client.get(f"/studies/{uid}/referral.pdf")
    texts = {"refused": _visible_text(_schedule(client, birth_date="x", accession="", given="").text)}
    _schedule(client)
    texts |= {p: _visible_text(client.get(p).text) for p in ("/schedule", "/schedule?done=1", f"/studies/{uid}")}
    for path, text in texts.items():
        words = " ".join(w for w in text.split() if w not in ALLOWED and not re.fullmatch(r"[\d.:,/\-—·]+", w) and "PACS@" not in w)
        assert not ENGLISH.findall(words), f"{path}: English words {sorted(set(ENGLISH.findall(words)))}"
        leaked = [s for s in english_sentences if s in text]
        assert not leaked, f"{path}: English catalog text {leaked}"
