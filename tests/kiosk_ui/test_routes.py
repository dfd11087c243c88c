"""The kiosk's routes through Litestar's TestClient: sign-in, roles, CSRF, audit, upload, bad input."""

from __future__ import annotations

import io
import re

import pytest
from litestar.testing import TestClient
from pypdf import PdfReader

from edge_agent.ingest import mg
from kiosk_ui.app import create_app
from kiosk_ui.referral import reference

from .conftest import PASSWORDS, Kiosk, csrf_of, make_kiosk, message_of, sign_in


# -- sign-in, sessions, lockout -------------------------------------------------------------
@pytest.mark.parametrize("path", ["/worklist", "/upload", "/audit", "/studies/x"])
def test_nothing_is_visible_without_signing_in(client: TestClient, kiosk: Kiosk, path: str):
    r = client.get(path, follow_redirects=False)
    assert r.status_code in (302, 303) and r.headers["location"].startswith("/login")
    page = client.get(path)
    assert "Bu sayfayı görmek için giriş yapmalısınız." in page.text
    assert "ÇELİK" not in page.text


def test_images_and_state_refuse_without_session(client: TestClient, kiosk: Kiosk):
    uid = kiosk.studies["priority"]
    sop = kiosk.sops(uid)[0]
    for path in (f"/studies/{uid}/views/{sop}/image.png", f"/studies/{uid}/state.json", f"/studies/{uid}/referral.pdf"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code in (302, 401)
        assert not r.content.startswith((b"\x89PNG", b"%PDF"))


def test_sign_in_sets_a_strict_httponly_cookie_and_opens_the_worklist(client: TestClient, kiosk: Kiosk):
    r = sign_in(client, "doktor")
    assert r.status_code == 303 and r.headers["location"] == "/worklist"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("kiosk_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert kiosk.audit("login") == [("doktor", None, "")]


def test_session_cookie_is_secure_over_tls(kiosk: Kiosk):
    with TestClient(create_app(kiosk.settings, kiosk.services), base_url="https://kiosk.local") as c:
        r = sign_in(c, "doktor")
    cookie = next(x for x in r.headers.get_list("set-cookie") if x.startswith("kiosk_session="))
    assert "Secure" in cookie


def test_wrong_password_shows_turkish_message_and_no_session(client: TestClient, kiosk: Kiosk):
    r = sign_in(client, "doktor", "yanlis-parola")
    assert r.status_code == 401
    assert message_of(r.text) == "Kullanıcı adı veya parola yanlış. Lütfen tekrar deneyin."
    assert not any(c.startswith("kiosk_session=") for c in r.headers.get_list("set-cookie"))
    assert kiosk.count("kiosk_sessions") == 0
    unknown = sign_in(client, "kimse", "bir-parola-123")
    assert message_of(unknown.text) == message_of(r.text)  # an unknown name reads exactly like a wrong password


def test_account_locks_after_repeated_failures_then_admin_unlocks(tmp_path):
    k = make_kiosk(tmp_path / "home", kiosk_lockout_failures=3)
    try:
        with TestClient(create_app(k.settings, k.services)) as c:
            for _ in range(2):
                assert "yanlış" in message_of(sign_in(c, "doktor", "yanlis-parola").text)
            third = sign_in(c, "doktor", "yanlis-parola")
            assert "kilitlendi" in message_of(third.text)
            right = sign_in(c, "doktor")
            assert right.status_code == 401 and "kilitli" in message_of(right.text)
            assert k.count("kiosk_sessions") == 0
            assert [a[0] for a in k.audit("account_locked")] == ["doktor"]
            k.services.unlock("doktor")
            assert sign_in(c, "doktor").status_code == 303
            k.clock.now += k.settings.kiosk_lockout_s + 1  # a lock also ends by itself
    finally:
        k.services.close()
        k.box.close()


def test_session_ends_after_inactivity(doctor: TestClient, kiosk: Kiosk):
    assert doctor.get("/worklist").status_code == 200
    kiosk.clock.now += kiosk.settings.kiosk_idle_timeout_s + 1
    r = doctor.get("/worklist", follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == "/login?m=auth.expired"
    page = doctor.get("/login?m=auth.expired")
    assert "Oturumunuz uzun süre işlem yapılmadığı için kapandı." in page.text
    assert kiosk.count("kiosk_sessions") == 0
    assert kiosk.audit("session_expired")


def test_background_polling_does_not_keep_a_session_alive(doctor: TestClient, kiosk: Kiosk):
    for _ in range(3):
        kiosk.clock.now += kiosk.settings.kiosk_idle_timeout_s / 2
        doctor.get("/statusbar.json")
    assert doctor.get("/worklist", follow_redirects=False).status_code == 302


def test_sign_out_needs_the_token_and_ends_the_session(doctor: TestClient, kiosk: Kiosk):
    forged = doctor.post("/logout", data={"_csrf": "forged"}, follow_redirects=False)
    assert forged.status_code == 403 and kiosk.count("kiosk_sessions") == 1
    token = csrf_of(doctor.get("/worklist").text)
    r = doctor.post("/logout", data={"_csrf": token}, follow_redirects=False)
    assert r.status_code == 303 and kiosk.count("kiosk_sessions") == 0


# -- CSRF -----------------------------------------------------------------------------------------
def test_sign_in_without_its_form_token_is_refused(client: TestClient, kiosk: Kiosk):
    r = client.post("/login", data={"username": "doktor", "password": PASSWORDS["doktor"]})
    assert r.status_code == 403
    assert message_of(r.text).startswith("Form güvenlik doğrulamasından geçemedi")
    assert kiosk.count("kiosk_sessions") == 0


@pytest.mark.parametrize("token", [None, "", "forged-token-value"])
def test_feedback_with_missing_or_forged_token_changes_nothing(doctor: TestClient, kiosk: Kiosk, token):
    data = {"agrees": "yes", "birads": "1", "density": "B", "notes": ""}
    if token is not None:
        data["_csrf"] = token
    r = doctor.post(f"/studies/{kiosk.studies['priority']}/feedback", data=data)
    assert r.status_code == 403
    assert "Hiçbir değişiklik yapılmadı" in message_of(r.text)
    assert kiosk.count("kiosk_feedback") == 0 and not kiosk.audit("feedback")


def test_upload_with_forged_token_stores_nothing(doctor: TestClient, kiosk: Kiosk):
    before = kiosk.count("ingest_instances")
    data = mg.to_bytes(mg.screening_study(mg.fake_patient(3), seed=3, size=64)[0])
    r = doctor.post("/upload", data={"_csrf": "forged"}, files=[("files", ("a.dcm", data, "application/dicom"))])
    assert r.status_code == 403 and kiosk.count("ingest_instances") == before


# -- worklist ---------------------------------------------------------------------------------------
def test_worklist_shows_real_names_priority_first(doctor: TestClient, kiosk: Kiosk):
    html = doctor.get("/worklist").text
    names = re.findall(r'class="name">([^<]+)<', html)
    assert names[0] == "Ayşe ÇELİK"  # the priority study first, even though it arrived first
    assert set(names) == {"Ayşe ÇELİK", "Gülşen ŞAHİN", "İpek ÖZTÜRK"}
    assert "38291047562" in html
    assert "Öncelikli radyolog değerlendirmesi" in html and "Görüntüler geliyor" in html
    assert kiosk.audit("view_worklist")[0][0] == "doktor"


def test_worklist_search_and_filters(doctor: TestClient, kiosk: Kiosk):
    def names(query: str) -> list[str]:
        return re.findall(r'class="name">([^<]+)<', doctor.get("/worklist" + query).text)

    assert names("?q=%C5%9Fahin") == ["Gülşen ŞAHİN"]  # 'şahin' finds ŞAHİN
    assert names("?q=sahin") == ["Gülşen ŞAHİN"]  # and so does a keyboard without Turkish letters
    assert names("?q=IPEK") == names("?q=%C4%B0pek") == ["İpek ÖZTÜRK"]
    assert names("?q=%C3%B6zt%C3%BCrk+ipek") == ["İpek ÖZTÜRK"]
    assert names("?q=38291047562") == ["Ayşe ÇELİK"]
    assert names("?status=receiving") == ["İpek ÖZTÜRK"]
    assert names("?triage=no_suspicious_finding") == ["Gülşen ŞAHİN"]
    assert names("?status=bogus&triage=bogus&days=x") != []  # unknown filter values are ignored, not errors


# -- study view, heatmaps, state ------------------------------------------------------------------
def test_study_page_shows_views_scores_explanation_and_model(doctor: TestClient, kiosk: Kiosk):
    uid = kiosk.studies["priority"]
    html = doctor.get(f"/studies/{uid}").text
    assert "Ayşe ÇELİK" in html and "12.04.1968" in html
    assert html.count('class="base"') == 4 and html.count('class="overlay"') == 4
    assert "Yapay zekâ belirgin şüpheli bir alan buldu." in html and "Ne yapmalı:" in html
    assert "synthetic-demo" in html and "0,91" in html  # Turkish decimals
    assert kiosk.audit("view_study") == [("doktor", uid, "")]


def test_view_images_and_heatmaps_are_pngs(doctor: TestClient, kiosk: Kiosk):
    uid = kiosk.studies["priority"]
    sop = kiosk.sops(uid)[0]
    for kind in ("image", "heatmap"):
        r = doctor.get(f"/studies/{uid}/views/{sop}/{kind}.png")
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG")


def test_a_request_never_shows_another_patients_image(doctor: TestClient, kiosk: Kiosk):
    other_sop = kiosk.sops(kiosk.studies["normal"])[0]
    r = doctor.get(f"/studies/{kiosk.studies['priority']}/views/{other_sop}/image.png")
    assert r.status_code == 404 and not r.content.startswith(b"\x89PNG")
    assert "görüntü yok" in r.json()["error"]


@pytest.mark.parametrize("uid", ["1.2.3.4", "..%2F..%2Fetc%2Fpasswd", "%27%20OR%201%3D1--", "x" * 300])
def test_unknown_study_ids_get_a_turkish_404(doctor: TestClient, kiosk: Kiosk, uid: str):
    r = doctor.get(f"/studies/{uid}")
    assert r.status_code == 404
    assert message_of(r.text).startswith("Bu kimlikle bir tetkik bu cihazda yok.") or "bulunamadı" in message_of(r.text)
    assert "ÇELİK" not in r.text and not kiosk.audit("view_study")


def test_pending_study_opens_at_once_and_its_state_follows_the_result(doctor: TestClient, kiosk: Kiosk):
    uid = kiosk.studies["pending"]
    html = doctor.get(f"/studies/{uid}").text
    assert 'data-pending="yes"' in html and "kendiliğinden yenilenir" in html
    assert doctor.get(f"/studies/{uid}/state.json").json() == {"status": "receiving"}
    from kiosk_ui import synthetic

    synthetic.write_result(kiosk.services.ingest, uid, triage=None, score=None, status="incomplete")
    assert doctor.get(f"/studies/{uid}/state.json").json() == {"status": "incomplete"}
    html = doctor.get(f"/studies/{uid}").text
    assert "Sağ MLO eksik, çekimi tamamlayın." in html and "Sol MLO eksik, çekimi tamamlayın." in html


# -- feedback --------------------------------------------------------------------------------------
def test_feedback_is_stored_as_a_labelled_example_and_audited(doctor: TestClient, kiosk: Kiosk):
    uid = kiosk.studies["priority"]
    token = csrf_of(doctor.get(f"/studies/{uid}").text)
    r = doctor.post(f"/studies/{uid}/feedback", data={"_csrf": token, "agrees": "no", "notes": "Sağ üst dış kadranda kitle"})
    assert "Değerlendirmeniz kaydedildi." in r.text and "Sağ üst dış kadranda kitle" in r.text
    row = kiosk.box.db.execute("SELECT username, role, agrees, birads, density, category_source, notes, model_version, triage"
                               " FROM kiosk_feedback").fetchone()
    assert row == ("doktor", "doctor", 0, None, None, None, "Sağ üst dış kadranda kitle", "synthetic-demo", "priority_radiologist_review")
    assert kiosk.audit("feedback") == [("doktor", uid, "disagrees")]


@pytest.mark.parametrize("agrees,birads,density", [("yes", "7", "B"), ("yes", "x", "B"), ("yes", "2", "E"), ("yes", "2", ""), ("", "", ""),
                                                   ("maybe", "", "")])
def test_invalid_feedback_is_refused_in_turkish(doctor: TestClient, kiosk: Kiosk, agrees, birads, density):
    uid = kiosk.studies["priority"]
    token = csrf_of(doctor.get(f"/studies/{uid}").text)
    r = doctor.post(f"/studies/{uid}/feedback", data={"_csrf": token, "agrees": agrees, "birads": birads, "density": density, "from_report": "yes"})
    assert r.status_code == 400 and "Hiçbir şey kaydedilmedi" in message_of(r.text)
    assert kiosk.count("kiosk_feedback") == 0


def test_feedback_on_an_unknown_study_stores_nothing(doctor: TestClient, kiosk: Kiosk):
    token = csrf_of(doctor.get("/worklist").text)
    r = doctor.post("/studies/1.2.3/feedback", data={"_csrf": token, "agrees": "yes"})
    assert r.status_code == 404 and kiosk.count("kiosk_feedback") == 0


# -- referral --------------------------------------------------------------------------------------
def test_referral_pdf_has_turkish_text_and_is_audited(doctor: TestClient, kiosk: Kiosk):
    uid = kiosk.studies["priority"]
    r = doctor.get(f"/studies/{uid}/referral.pdf")
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"].startswith("attachment;")
    reader = PdfReader(io.BytesIO(r.content))
    text = reader.pages[0].extract_text()
    assert "Meme Radyolojisi Sevk Belgesi" in text
    assert "Ayşe ÇELİK" in text and "38291047562" in text
    assert "Öncelikli radyolog değerlendirmesi" in text and "Dr. Zeynep Işık" in text
    assert abs(float(reader.pages[0].mediabox.width) - 595.28) < 1  # A4
    assert len(reader.pages[0].images) >= 5  # four views with heatmaps and the QR code
    assert kiosk.audit("export_referral")[0][:2] == ("doktor", uid)
    doctor.get(f"/studies/{uid}/referral.pdf?print=1")
    assert kiosk.audit("print_referral")[0][:2] == ("doktor", uid)


def test_referral_qr_carries_only_the_pseudonymous_reference(doctor: TestClient, kiosk: Kiosk):
    zxingcpp = pytest.importorskip("zxingcpp", reason="zxing-cpp (a dev dependency) decodes the QR code")
    view = kiosk.services.study(kiosk.studies["priority"])
    ref = reference(view)
    assert ref == f"MAMMO:{view.pseudonym}:{view.study_uid}"
    assert "ÇELİK" not in ref and view.identity.patient_id not in ref
    pdf = PdfReader(io.BytesIO(doctor.get(f"/studies/{view.study_uid}/referral.pdf").content))
    decoded = [b.text for img in pdf.pages[0].images for b in zxingcpp.read_barcodes(img.image.convert("L"))]
    assert decoded == [ref]


# -- roles -----------------------------------------------------------------------------------------
def test_technician_uploads_but_cannot_open_results(client: TestClient, kiosk: Kiosk):
    sign_in(client, "teknisyen")
    assert client.get("/upload").status_code == 200
    r = client.get(f"/studies/{kiosk.studies['priority']}")
    assert r.status_code == 403 and "yetkiniz yok" in message_of(r.text)
    assert not kiosk.audit("view_study")


def test_radiologist_gives_feedback_but_does_not_upload(client: TestClient, kiosk: Kiosk):
    sign_in(client, "radyolog")
    assert client.get("/upload").status_code == 403
    assert 'id="feedback"' in client.get(f"/studies/{kiosk.studies['normal']}").text


def test_admin_sees_the_audit_trail(client: TestClient, kiosk: Kiosk):
    sign_in(client, "yonetici")
    html = client.get("/audit").text
    assert "login" in html and "user_add" in html


def test_admin_adds_a_user_and_unlocks_a_locked_one(client: TestClient, kiosk: Kiosk):
    for _ in range(kiosk.settings.kiosk_lockout_failures):
        sign_in(client, "doktor", "yanlis-parola")
    sign_in(client, "yonetici")
    page = client.get("/users").text
    assert "Kilidi aç" in page
    token = csrf_of(page)
    weak = client.post("/users", data={"_csrf": token, "username": "yeni", "full_name": "Dr. Ömer", "role": "doctor", "password": "kisa"})
    assert weak.status_code == 400 and "en az 10 karakter" in message_of(weak.text)
    r = client.post("/users", data={"_csrf": token, "username": "yeni", "full_name": "Dr. Ömer", "role": "doctor", "password": "yeterince-uzun-1"})
    assert "Kullanıcı eklendi." in r.text and "Dr. Ömer" in r.text
    client.post("/users/doktor/unlock", data={"_csrf": token})
    assert kiosk.audit("user_unlock") == [("yonetici", None, "doktor")]
    assert kiosk.audit("user_add")[-1] == ("yonetici", None, "yeni (doctor)")


def test_only_an_admin_manages_users(doctor: TestClient, kiosk: Kiosk):
    token = csrf_of(doctor.get("/worklist").text)
    r = doctor.post("/users", data={"_csrf": token, "username": "sahte", "role": "admin", "password": "yeterince-uzun-1"})
    assert r.status_code == 403 and kiosk.count("kiosk_users", "username = 'sahte'") == 0


# -- upload ----------------------------------------------------------------------------------------
def test_usb_upload_reports_each_file_and_refuses_bad_ones(doctor: TestClient, kiosk: Kiosk):
    before_instances, before_quarantine = kiosk.count("ingest_instances"), kiosk.count("ingest_quarantine")
    views = [mg.to_bytes(ds) for ds in mg.screening_study(mg.fake_patient(4), seed=4, size=64)]
    files = [("files", (f"DICOM/IM{i}", data, "application/dicom")) for i, data in enumerate(views)]
    files += [
        ("files", ("notlar.txt", "Bu bir DICOM değil".encode() * 20, "text/plain")),
        ("files", ("../../etc/passwd", views[0], "application/dicom")),
        ("files", ("/etc/shadow", views[0], "application/dicom")),
        ("files", ("DICOMDIR", b"\0" * 128 + b"DICM" + b"\0" * 10, "application/dicom")),
    ]
    token = csrf_of(doctor.get("/upload").text)
    r = doctor.post("/upload", data={"_csrf": token}, files=files)
    assert r.status_code == 200
    assert "4 / 8 dosya kaydedildi." in r.text
    assert r.text.count("Kaydedildi (") == 4
    assert "Bu bir DICOM dosyası değil; dosya alınmadı." in r.text
    assert r.text.count("Dosya adı geçersiz") == 2
    assert "DICOMDIR dizin dosyası" in r.text
    assert kiosk.count("ingest_instances") == before_instances + 4
    assert kiosk.count("ingest_quarantine") == before_quarantine
    assert "upload" in [a for a in (row[0] for row in kiosk.box.db.execute("SELECT action FROM kiosk_audit"))]
    assert "Elif" not in r.text  # per-file results name files, not patients


def test_oversized_upload_is_refused_whole(tmp_path):
    k = make_kiosk(tmp_path / "home", kiosk_upload_max_bytes=50_000)
    try:
        with TestClient(create_app(k.settings, k.services)) as c:
            sign_in(c, "doktor")
            token = csrf_of(c.get("/upload").text)
            before = k.count("ingest_instances")
            big = mg.to_bytes(mg.screening_study(mg.fake_patient(5), seed=5, size=256)[0])
            r = c.post("/upload", data={"_csrf": token}, files=[("files", ("big.dcm", big, "application/dicom"))])
            assert r.status_code == 413
            assert message_of(r.text) == "Yükleme çok büyük. Hiçbir dosya alınmadı; daha az dosya seçerek tekrar deneyin."
            assert k.count("ingest_instances") == before
    finally:
        k.services.close()
        k.box.close()


def test_empty_upload_says_so(doctor: TestClient, kiosk: Kiosk):
    token = csrf_of(doctor.get("/upload").text)
    r = doctor.post("/upload", data={"_csrf": token}, files=[("files", ("", b"", "application/octet-stream"))])
    assert r.status_code == 413 or r.status_code == 400
    assert "Yüklenecek dosya seçilmedi" in message_of(r.text)


# -- status bar and language -----------------------------------------------------------------------
def test_status_bar_shows_offline_outbox_model_and_disk(doctor: TestClient, kiosk: Kiosk):
    # "Waiting to sync" counts the finished local updates in the sync outbox (two, kept sealed: this box has no kit yet).
    import numpy as np

    from sync import outbox
    from sync.update import LocalUpdate, TrainableSpec

    spec = TrainableSpec(("head.bias",), ((2,),))
    for n in ("u1", "u2"):
        outbox.place_update(kiosk.box.db, kiosk.box.settings.home, LocalUpdate(n, "0.1.0", spec, np.zeros(2, np.float32), 10, 0.3, 1e-5, 1.1),
                            keystore=kiosk.box.keystore)
    html = doctor.get("/worklist").text
    bar = html[html.index('id="statusbar"'):]
    assert "Çevrimdışı" in bar and 'id="bar-outbox">2<' in bar
    assert "Son eşitleme: <b>—</b>" in bar and "synthetic-demo" in bar and "cpu-basic" in bar and "GB" in bar
    assert doctor.get("/statusbar.json").json()["online"] is False
    # The last exchange with the coordinator, as the box's ClientApp records it, becomes "last sync".
    link = kiosk.box.settings.home / "sync" / "link.json"
    link.parent.mkdir(exist_ok=True)
    link.write_text('{"last_contact_at": 1796050000.0}')
    bar = doctor.get("/worklist").text
    assert "Son eşitleme: <b>—</b>" not in bar[bar.index('id="statusbar"'):]


def test_english_is_available(doctor: TestClient, kiosk: Kiosk):
    doctor.get("/lang/en?next=/worklist")
    html = doctor.get("/worklist").text
    assert "Worklist" in html and "Priority radiologist review" in html and 'lang="en"' in html
    r = doctor.get("/lang/en?next=//evil.example/", follow_redirects=False)
    assert r.headers["location"] == "/worklist"  # no open redirect


def test_security_headers_keep_everything_local(doctor: TestClient):
    r = doctor.get("/worklist")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"
    assert "http://" not in re.sub(r'http://kiosk\.local', "", r.text) and "https://" not in r.text


def test_unknown_page_is_a_turkish_404(doctor: TestClient):
    r = doctor.get("/nereye")
    assert r.status_code == 404 and message_of(r.text) == "Aradığınız sayfa bulunamadı."


def test_a_form_sent_after_the_session_expired_changes_nothing(doctor: TestClient, kiosk: Kiosk):
    uid = kiosk.studies["priority"]
    token = csrf_of(doctor.get(f"/studies/{uid}").text)
    kiosk.clock.now += kiosk.settings.kiosk_idle_timeout_s + 1
    r = doctor.post(f"/studies/{uid}/feedback", data={"_csrf": token, "agrees": "yes", "birads": "1", "density": "A"})
    assert r.status_code == 401
    assert message_of(r.text) == "Oturumunuz uzun süre işlem yapılmadığı için kapandı. Lütfen yeniden giriş yapın."
    assert kiosk.count("kiosk_feedback") == 0


def test_an_oversized_form_is_refused_before_it_is_read(client: TestClient, kiosk: Kiosk):
    page = client.get("/login")
    r = client.post("/login", data={"_csrf": csrf_of(page.text), "username": "doktor", "password": "x" * 200_000})
    assert r.status_code == 413 and message_of(r.text) == "İstek çok büyük; hiçbir şey değiştirilmedi."
    assert kiosk.count("kiosk_sessions") == 0 and not kiosk.audit("login_failed")
