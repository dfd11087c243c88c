"""End to end in a real headless Chromium (Debian's package), driven by Playwright: the doctor's walk through the kiosk,
and what the doctor reads on a real model's result and on an incomplete study. One browser serves the whole module.

Screenshots of each main screen go to ``$MAMMO_SCREENSHOTS`` when set
(``MAMMO_SCREENSHOTS=docs/screenshots`` refreshes the ones in the docs),
otherwise to the test's temporary directory.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from pypdf import PdfReader

from edge_agent.inference.worker import result_of
from edge_agent.ingest import mg
from edge_agent.ingest.service import IngestService
from kiosk_ui import synthetic
from kiosk_ui.server import free_port, serve

from .conftest import PASSWORDS, make_kiosk, run_real_model

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: install Debian's chromium (scripts/apt-packages.txt) to run the browser tests")


@pytest.fixture
def served(tmp_path):
    k = make_kiosk(tmp_path / "home")
    running = serve(k.settings, k.services, host="127.0.0.1", port=free_port())
    yield k, running.url
    running.stop()
    k.services.close()
    k.box.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    target = Path(os.environ.get("MAMMO_SCREENSHOTS") or tmp_path / "screenshots")
    target.mkdir(parents=True, exist_ok=True)
    return target


def _images_loaded(page) -> bool:
    return page.evaluate("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")


def test_doctor_walks_from_sign_in_to_a_referral_pdf(served, browser, shots: Path, tmp_path: Path):
    kiosk, url = served
    context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True, locale="tr-TR")
    page = context.new_page()
    outside: list[str] = []
    page.on("request", lambda req: outside.append(req.url) if not req.url.startswith(url) else None)
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.request.method} {r.url}") if r.status >= 400 else None)

    # Sign in (the worklist sends us to the sign-in page first).
    page.goto(url + "/worklist")
    assert page.url.startswith(url + "/login")
    assert page.inner_text("#login-message") == "Bu sayfayı görmek için giriş yapmalısınız."
    page.screenshot(path=str(shots / "01-giris.png"))
    page.fill("input[name=username]", "doktor")
    page.fill("input[name=password]", "yanlis-parola")
    page.click("button[type=submit]")
    assert page.inner_text("#login-message") == "Kullanıcı adı veya parola yanlış. Lütfen tekrar deneyin."
    page.fill("input[name=username]", "doktor")
    page.fill("input[name=password]", PASSWORDS["doktor"])
    page.click("button[type=submit]")
    page.wait_for_url(url + "/worklist")

    # Worklist: priority first, real names, the offline badge in the status bar.
    names = page.locator("#worklist .name").all_inner_texts()
    assert names[0] == "Ayşe ÇELİK" and "İpek ÖZTÜRK" in names
    assert page.inner_text("#net-badge") == "Çevrimdışı" and page.is_visible("#net-badge")
    page.screenshot(path=str(shots / "02-is-listesi.png"))

    # Study: four views with heatmaps, the explanation, then the heatmap toggled off and on.
    page.click("#worklist tbody tr:first-child a.open")
    page.wait_for_selector("#triage")
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert page.inner_text("#triage") == "Öncelikli radyolog değerlendirmesi"
    assert "belirgin şüpheli" in page.inner_text("#triage-explain")
    assert page.locator("img.base").count() == 4
    assert page.locator("img.overlay").first.is_visible()
    page.set_viewport_size({"width": 1366, "height": 1720})  # the whole study page, status bar at its foot
    page.screenshot(path=str(shots / "03-cekim-isi-haritasi.png"))
    page.set_viewport_size({"width": 1366, "height": 900})
    page.click("#heatmap-toggle")
    assert page.locator("img.overlay").first.is_hidden()
    assert page.get_attribute("#heatmap-toggle", "aria-pressed") == "false"
    page.locator(".views-section").screenshot(path=str(shots / "04-cekim-isi-haritasi-kapali.png"))
    page.click("#heatmap-toggle")
    assert page.locator("img.overlay").first.is_visible()

    # Feedback: nothing chosen until the doctor chooses; the choice then shows as chosen. Agreement and notes only.
    assert page.locator("#feedback input:checked").count() == 0
    agree = page.locator("#agree-choice label.pill").first
    before = agree.evaluate("e => getComputedStyle(e).backgroundColor")
    page.click("#feedback-submit")  # the browser refuses a form without a choice
    assert page.evaluate("() => document.querySelector('input[name=agrees]').validity.valueMissing")
    agree.click()
    assert page.is_checked("input[name=agrees][value=yes]")
    assert agree.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(138, 28, 74)" != before
    assert page.is_visible("#report-entry") and not page.is_visible("input[name=birads]")  # folded away: the report's categories
    page.fill("textarea[name=notes]", "Sağ meme üst dış kadranda ele gelen kitle; radyoloğa öncelikli sevk.")
    page.locator("#feedback").screenshot(path=str(shots / "05-geri-bildirim.png"))
    page.click("#feedback-submit")
    page.wait_for_selector("#feedback-saved")
    assert "Sağ meme üst dış kadranda" in page.inner_text("#feedback-history")
    assert kiosk.count("kiosk_feedback", "birads IS NULL AND density IS NULL AND agrees = 1") == 1

    # Referral: one tap from the study (two from the worklist); the PDF's text is Turkish and names the patient.
    with page.expect_download() as dl:
        page.click("#referral-link")
    pdf_path = tmp_path / "sevk.pdf"
    dl.value.save_as(pdf_path)
    text = " ".join(PdfReader(io.BytesIO(pdf_path.read_bytes())).pages[0].extract_text().split())
    assert "Meme Radyolojisi Sevk Belgesi" in text and "Ayşe ÇELİK" in text and "Sayın Radyoloji Uzmanı" in text
    assert "Yapay zekâ ön değerlendirmesi" in text and "ele gelen kitle" in text and "BI-RADS" not in text
    assert [row[1] for row in kiosk.audit("export_referral")] == [kiosk.studies["priority"]]

    # A study still being received opens at once, then updates itself when its result arrives.
    page.goto(url + f"/studies/{kiosk.studies['pending']}")
    assert page.get_attribute("#study", "data-pending") == "yes"
    page.screenshot(path=str(shots / "06-analiz-bekleniyor.png"))
    writer = IngestService(db=kiosk.box.db, keystore=kiosk.box.keystore, queue=kiosk.box.queue, settings=kiosk.settings)
    synthetic.write_result(writer, kiosk.studies["pending"], triage="radiologist_review", score=0.55)
    page.wait_for_selector("#triage", timeout=20_000)
    assert page.inner_text("#triage") == "Radyolog değerlendirmesi"

    # USB upload: per-file results.
    files = []
    for i, ds in enumerate(mg.screening_study(mg.fake_patient(3), seed=3, size=96)):
        f = tmp_path / "usb" / "DICOM" / f"IM{i:04d}"
        mg.write(ds, f)
        files.append(str(f))
    (tmp_path / "usb" / "BENIOKU.txt").write_text("Bu bir DICOM dosyası değil", encoding="utf-8")
    files.append(str(tmp_path / "usb" / "BENIOKU.txt"))
    page.click("text=USB'den yükle")
    page.set_input_files("#upload-files", files)
    page.click("#upload-submit")
    page.wait_for_selector("#upload-results")
    assert page.inner_text("#upload-summary") == "4 / 5 dosya kaydedildi."
    assert "Bu bir DICOM dosyası değil; dosya alınmadı." in page.inner_text("#upload-results")
    page.screenshot(path=str(shots / "07-usb-yukleme.png"))

    # English is one tap away.
    page.click("a.lang >> text=EN")
    page.goto(url + "/worklist")
    assert page.inner_text("h1") == "Worklist" and page.inner_text("#net-badge") == "Offline"
    page.screenshot(path=str(shots / "08-worklist-en.png"))

    assert outside == [], f"the kiosk reached outside the box: {outside}"
    assert failed == [f"401 POST {url}/login"], "only the wrong password may fail"
    context.close()


def test_idle_screen_signs_itself_out(tmp_path, browser):
    k = make_kiosk(tmp_path / "home", kiosk_idle_timeout_s=2.0)
    running = serve(k.settings, k.services, host="127.0.0.1", port=free_port())
    try:
        page = browser.new_page()
        page.goto(running.url + "/login")
        page.fill("input[name=username]", "doktor")
        page.fill("input[name=password]", PASSWORDS["doktor"])
        page.click("button[type=submit]")
        page.wait_for_url(running.url + "/worklist")
        page.wait_for_url(running.url + "/login?m=auth.expired", timeout=15_000)
        assert "Oturumunuz" in page.inner_text("#login-message")
        assert k.count("kiosk_sessions") == 0
        page.close()
    finally:
        running.stop()
        k.services.close()
        k.box.close()


def _num(text: str) -> float:
    return float(text.strip().replace(",", "."))


def test_doctor_reads_a_real_model_result_and_an_incomplete_study(browser, shots: Path, tmp_path: Path):
    k = make_kiosk(tmp_path / "home")
    real = run_real_model(k)
    partial = run_real_model(k, views=3, seed=8)  # no left MLO
    release = Path(k.box.db.execute("SELECT path FROM model_activations ORDER BY id DESC LIMIT 1").fetchone()[0])
    info = json.loads((release / "model.json").read_text())
    running = serve(k.settings, k.services, host="127.0.0.1", port=free_port())
    url = running.url
    try:
        context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True, locale="tr-TR")
        page = context.new_page()
        page.goto(url + "/login")
        page.fill("input[name=username]", "doktor")
        page.fill("input[name=password]", PASSWORDS["doktor"])
        page.click("button[type=submit]")
        page.wait_for_url(url + "/worklist")

        # The incomplete study heads the worklist, in its own colour, saying which view is missing; no score.
        first = page.locator("#worklist tbody tr").first
        assert first.get_attribute("data-study") == partial and "row-incomplete" in first.get_attribute("class")
        assert "Eksik çekim: Sol MLO eksik" in first.inner_text()
        assert first.locator("td.score").inner_text() == "—"
        assert first.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(243, 236, 251)"
        page.screenshot(path=str(shots / "11-is-listesi-eksik-cekim.png"))

        # The real result: category first, then one score (the same quantity everywhere), the model's limits, heatmaps by rule.
        page.goto(url + f"/studies/{real}")
        page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert page.inner_text("#triage") in ("Öncelikli radyolog değerlendirmesi", "Radyolog değerlendirmesi", "Şüpheli bulgu yok")
        assert re.fullmatch(r"-?\d,\d\d", page.inner_text("#study-score"))
        breasts = dict(re.findall(r"(Sağ|Sol) (-?\d,\d\d)", page.inner_text("#breast-scores")))
        views = [(c.split()[0], _num(c.rsplit(" ", 1)[1])) for c in page.locator("figcaption").all_inner_texts()]
        assert len(views) == 4 and all("şüphe skoru" in c for c in page.locator("figcaption").all_inner_texts())
        for side, score in breasts.items():
            assert _num(score) == max(s for sd, s in views if sd == side)
        assert _num(page.inner_text("#study-score")) == max(_num(v) for v in breasts.values())
        perf = page.inner_text("#model-performance")
        assert "Türkiye'deki kadınlarda ve dijital mamografilerde doğrulanmamıştır" in perf
        woman = info.get("woman_level")
        if woman:
            assert f"duyarlılık %{round(100 * woman['sensitivity_review'])}" in perf and f"{woman['n_women']} kadın" in perf
        else:
            assert "performans ölçümü yok" in perf
        assert page.is_visible("#model-experimental") == (not woman or bool(woman.get("experimental", True)))
        # heatmaps exactly on the views whose stored score reaches the release's review threshold
        review = info["operating_points"]["review"]
        overlays = page.locator("img.overlay").count()
        assert overlays == sum(v["suspicion"] >= review for v in result_of(k.box.db, real)["views"])
        assert page.is_visible("#heatmap-legend") == (overlays > 0) and page.is_visible("#heatmap-none") == (overlays == 0)
        assert page.locator("#feedback input:checked").count() == 0
        page.set_viewport_size({"width": 1366, "height": 1900})
        page.screenshot(path=str(shots / "10-gercek-model-sonucu.png"))
        page.set_viewport_size({"width": 1366, "height": 900})
        with page.expect_download() as dl:
            page.click("#referral-link")
        pdf_path = tmp_path / "real.pdf"
        dl.value.save_as(pdf_path)
        text = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(pdf_path).pages)
        assert "Yapay zekâ ön değerlendirmesi" in text and page.inner_text("#study-score") in text and "Bulgular" not in text

        # The incomplete study: what is missing and what to do, no result anywhere, and its printout says so.
        page.goto(url + f"/studies/{partial}")
        assert page.inner_text("#incomplete-problems") == "Sol MLO eksik, çekimi tamamlayın."
        assert page.inner_text("#triage") == "Eksik çekim: yapay zekâ sonucu yok"
        for absent in ("#study-score", "#breast-scores", ".view-score", "img.overlay", "#model-performance"):
            assert page.locator(absent).count() == 0, absent
        page.screenshot(path=str(shots / "12-eksik-cekim.png"))
        printed = page.request.get(url + page.get_attribute("#print-link", "href"))
        text = " ".join(PdfReader(io.BytesIO(printed.body())).pages[0].extract_text().split())
        assert "EKSİK ÇEKİM" in text and "Sol MLO eksik." in text and "Çekim skoru" not in text
        context.close()
    finally:
        running.stop()
        k.services.close()
        k.box.close()
