"""End to end in a real headless Chromium (Debian's package), driven by Playwright: the doctor's walk through the kiosk.

Screenshots of each main screen go to ``$MAMMO_SCREENSHOTS`` when set
(``MAMMO_SCREENSHOTS=docs/screenshots`` refreshes the ones in the docs),
otherwise to the test's temporary directory.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from pypdf import PdfReader

from edge_agent.ingest import mg
from edge_agent.ingest.service import IngestService
from kiosk_ui import synthetic
from kiosk_ui.server import free_port, serve

from .conftest import PASSWORDS, make_kiosk

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


@pytest.fixture
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

    # Feedback: confirm the result with BI-RADS and density.
    page.check("input[name=birads][value='4']")
    page.check("input[name=density][value='C']")
    page.fill("textarea[name=notes]", "Sağ meme üst dış kadranda düzensiz kitle; radyoloğa öncelikli sevk.")
    page.click("#feedback-submit")
    page.wait_for_selector("#feedback-saved")
    assert "Sağ meme üst dış kadranda" in page.inner_text("#feedback-history")
    assert kiosk.count("kiosk_feedback", "birads = 4 AND density = 'C' AND agrees = 1") == 1
    page.locator("#feedback").screenshot(path=str(shots / "05-geri-bildirim.png"))

    # Referral: one tap from the study (two from the worklist); the PDF's text is Turkish and names the patient.
    with page.expect_download() as dl:
        page.click("#referral-link")
    pdf_path = tmp_path / "sevk.pdf"
    dl.value.save_as(pdf_path)
    text = " ".join(PdfReader(io.BytesIO(pdf_path.read_bytes())).pages[0].extract_text().split())
    assert "Meme Radyolojisi Sevk Belgesi" in text and "Ayşe ÇELİK" in text and "BI-RADS 4" in text
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
