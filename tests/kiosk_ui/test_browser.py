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


def test_a_clinic_day_from_sign_in_to_the_radiologists_report(served, browser, shots: Path, tmp_path: Path):
    """Sign in, open the next priority study, view it, record agreement, print the referral from the page, and later
    enter the radiologist's report: the whole task, in Turkish, at 1366x768."""
    kiosk, url = served
    # Ayşe ÇELİK had a screening a year ago: it hangs beside today's in the viewer (and stays off today's worklist).
    earlier = synthetic.ingest_study(kiosk.services.ingest, seed=13, patient=0)
    synthetic.write_result(kiosk.services.ingest, earlier, triage="no_suspicious_finding", score=0.1)
    kiosk.box.db.execute("UPDATE ingest_studies SET first_seen = first_seen - 365 * 86400 WHERE study_uid = ?", [earlier])
    context = browser.new_context(viewport={"width": 1366, "height": 768}, accept_downloads=True, locale="tr-TR")
    # Headless Chromium has no print dialog (a real print() there crashes the page): each frame counts its print() calls.
    context.add_init_script("window.print = function () { window.__printed = (window.__printed || 0) + 1; };")
    page = context.new_page()
    outside: list[str] = []
    # (the browser's own PDF viewer, which shows the printed letter, loads its parts from chrome:// and chrome-extension://)
    page.on("request", lambda req: outside.append(req.url) if not req.url.startswith((url, "chrome://", "chrome-extension://")) else None)
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.request.method} {r.url}") if r.status >= 400 else None)

    # Sign in (the worklist sends us to the sign-in page first).
    page.goto(url + "/worklist")
    assert page.url.startswith(url + "/login")
    assert page.inner_text("#login-message") == "Bu sayfayı görmek için giriş yapmalısınız."
    assert page.inner_text("button[type=submit]") == "Giriş yap"
    _shot(page, shots / "01-giris.png")
    page.fill("input[name=username]", "doktor")
    page.fill("input[name=password]", "yanlis-parola")
    page.click("button[type=submit]")
    assert page.inner_text("#login-message") == "Kullanıcı adı veya parola yanlış. Lütfen tekrar deneyin."
    page.fill("input[name=username]", "doktor")
    page.fill("input[name=password]", PASSWORDS["doktor"])
    page.click("button[type=submit]")
    page.wait_for_url(url + "/worklist")

    # Worklist: today's counts, priority first, every study new, the offline badge in the status bar.
    assert page.inner_text("#today-counts") == "Bugün: 3 tetkik, 1 öncelikli, 3 yeni"
    names = page.locator("#worklist .name").all_inner_texts()
    assert names[0] == "Ayşe ÇELİK" and "İpek ÖZTÜRK" in names
    assert page.locator("#worklist .flow-badge").all_inner_texts() == ["Yeni"] * 3
    assert page.inner_text("#net-badge") == "Çevrimdışı" and page.is_visible("#net-badge")
    _shot(page, shots / "02-is-listesi.png")
    # The whole row opens the study, not only the name: tap the score cell of the normal study.
    page.click(f"#worklist tr[data-study='{kiosk.studies['normal']}'] td.score")
    page.wait_for_url(url + f"/studies/{kiosk.studies['normal']}")
    page.goto(url + "/worklist")
    assert page.inner_text("#today-counts") == "Bugün: 3 tetkik, 1 öncelikli, 2 yeni"

    # "Next new study": the priority one, nobody has opened it yet.
    page.click("#next-unseen")
    page.wait_for_url(url + f"/studies/{kiosk.studies['priority']}")
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert page.inner_text("#triage") == "Öncelikli radyolog değerlendirmesi"
    assert "belirgin şüpheli" in page.inner_text("#triage-explain")
    assert page.locator("img.base").count() == 4 and page.locator("img.overlay").first.is_visible()
    assert page.inner_text("#study-flow") == "Görüldü"
    _assert_fits(page)
    _shot(page, shots / "03-tetkik-isi-haritasi.png")
    page.click("#heatmap-toggle")
    assert page.locator("#views img.overlay").first.is_hidden()
    assert page.get_attribute("#heatmap-toggle", "aria-pressed") == "false"
    page.click("#heatmap-toggle")

    # The viewer: one view full screen, zoom, window and invert, heatmap opacity, right and left side by side.
    page.locator("#views .frame").first.click()
    assert page.is_visible("#viewer") and page.locator("#viewer-stage .viewer-pane").count() == 1
    page.click("#viewer [data-zoom='1.25']")
    assert "scale(1.25)" in page.locator("#viewer-stage .layer").first.get_attribute("style")
    page.check("#viewer-invert")
    page.fill("#viewer-contrast", "150")
    assert "contrast(150%) invert(1)" in page.locator("#viewer-stage img.base").first.get_attribute("style")
    page.fill("#viewer-opacity", "40")
    assert page.locator("#viewer-stage img.overlay").first.evaluate("e => getComputedStyle(e).opacity") == "0.4"
    page.click("#viewer-compare")
    assert [c.split(" ·")[0] for c in page.locator("#viewer-stage .caption").all_inner_texts()] == ["Sağ CC", "Sol CC"]
    page.wait_for_function("() => Array.from(document.querySelectorAll('#viewer-stage img')).every(i => i.complete && i.naturalWidth > 0)")
    _shot(page, shots / "04-goruntuleyici-sag-sol.png")
    page.click("#viewer-prior")
    captions = page.locator("#viewer-stage .caption").all_inner_texts()
    assert captions[0].startswith("Sağ CC ·") and captions[1].startswith("Sağ CC · önceki tetkik, ") and len(captions) == 2
    assert f"/studies/{earlier}/views/" in page.locator("#viewer-stage img.base").nth(1).get_attribute("src")
    page.click("#viewer-close")
    assert not page.is_visible("#viewer")

    # Feedback: nothing chosen until the doctor chooses; the choice then shows as chosen; the confirmation where she is.
    assert page.locator("#feedback input:checked").count() == 0
    page.click("#go-feedback")
    agree = page.locator("#agree-choice label.pill").first
    before = agree.evaluate("e => getComputedStyle(e).backgroundColor")
    page.click("#feedback-submit")  # the browser refuses a form without a choice
    assert page.evaluate("() => document.querySelector('input[name=agrees]').validity.valueMissing")
    agree.click()
    assert page.is_checked("input[name=agrees][value=yes]")
    assert agree.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(138, 28, 74)" != before
    page.fill("textarea[name=notes]", "Sağ meme üst dış kadranda ele gelen kitle; radyoloğa öncelikli sevk.")
    _shot(page, shots / "05-gorus.png", locator=page.locator("#feedback"))
    page.click("#feedback-submit")
    page.wait_for_selector("#feedback-saved")
    assert _in_view(page, "#feedback-saved"), "the confirmation must be on screen, not at the top of a long page"
    assert "Sağ meme üst dış kadranda" in page.inner_text("#feedback-history")
    assert kiosk.count("kiosk_feedback", "birads IS NULL AND density IS NULL AND agrees = 1") == 1

    # Print from the page itself: no new tab; the letter loads in a hidden frame of this page and goes to the printer.
    page.evaluate("() => window.scrollTo(0, 0)")
    page.click("#print-link")
    page.wait_for_function("() => document.getElementById('print-frame')")
    assert len(context.pages) == 1 and page.url.startswith(url + f"/studies/{kiosk.studies['priority']}")
    assert page.get_attribute("#print-frame", "src").endswith("/referral.pdf?print=1") and page.is_visible("#print-note")
    page.wait_for_function("() => (document.getElementById('print-frame').contentWindow.__printed || 0) > 0")
    assert page.evaluate("() => [document.getElementById('print-frame').contentDocument.contentType,"
                         " document.getElementById('print-frame').contentWindow.__printed]") == ["application/pdf", 1]
    _wait(lambda: kiosk.audit("print_referral"))
    assert [row[1] for row in kiosk.audit("print_referral")] == [kiosk.studies["priority"]]

    # The PDF itself (saved for the file): Turkish, names the patient, the doctor's notes, no categories yet.
    with page.expect_download() as dl:
        page.click("#referral-link")
    pdf_path = tmp_path / "sevk.pdf"
    dl.value.save_as(pdf_path)
    text = " ".join(PdfReader(io.BytesIO(pdf_path.read_bytes())).pages[0].extract_text().split())
    assert "Meme Radyolojisi Sevk Belgesi" in text and "Ayşe ÇELİK" in text and "Sayın Radyoloji Uzmanı" in text
    assert "Yapay zekâ ön değerlendirmesi" in text and "ele gelen kitle" in text and "BI-RADS" not in text
    page.goto(url + "/worklist?flow=referred")
    assert page.locator("#worklist .name").all_inner_texts() == ["Ayşe ÇELİK"]

    # Later: the radiologist's report comes back and the radiologist enters it from her own account.
    radiologist = browser.new_context(viewport={"width": 1366, "height": 768}, locale="tr-TR").new_page()
    radiologist.goto(url + "/login")
    radiologist.fill("input[name=username]", "radyolog")
    radiologist.fill("input[name=password]", PASSWORDS["radyolog"])
    radiologist.click("button[type=submit]")
    radiologist.wait_for_url(url + "/worklist")
    radiologist.goto(url + f"/studies/{kiosk.studies['priority']}")
    assert radiologist.get_attribute("#report-entry", "open") is not None  # a referred study opens on its report form
    radiologist.check("#report input[name=birads][value='4']")
    radiologist.check("#report input[name=density][value='C']")
    radiologist.check("#report input[name=recommendation][value='biopsy']")
    assert radiologist.locator("#from-report").count() == 0  # a radiologist types her own report
    radiologist.click("#report-submit")
    radiologist.wait_for_selector("#report-saved")
    assert _in_view(radiologist, "#report-saved")
    latest = radiologist.inner_text("#report-latest")
    assert "BI-RADS 4, yoğunluk C; Biyopsi" in latest and "radyolog Dr. İsmail Kaya girdi" in latest
    _shot(radiologist, shots / "06-radyoloji-raporu.png", locator=radiologist.locator("#report"))
    radiologist.context.close()
    assert kiosk.box.db.execute("SELECT birads, density, recommendation, source FROM kiosk_radiology_reports").fetchall() == [
        (4, "C", "biopsy", "radiologist")]

    # The doctor sees the answer on her worklist and the woman on the recall list.
    page.goto(url + "/worklist")
    assert page.locator(f"#worklist tr[data-study='{kiosk.studies['priority']}'] .flow-badge").inner_text() == "Radyoloji raporu geldi"
    page.click("nav >> text=Kontrol listesi")
    assert page.locator("#recalls .name").all_inner_texts() == ["Ayşe ÇELİK"] and "Biyopsi" in page.inner_text("#recalls")
    _shot(page, shots / "07-kontrol-listesi.png")

    # A study still being received opens at once, then updates itself when its result arrives.
    page.goto(url + f"/studies/{kiosk.studies['pending']}")
    assert page.get_attribute("#study", "data-pending") == "yes"
    writer = IngestService(db=kiosk.box.db, keystore=kiosk.box.keystore, queue=kiosk.box.queue, settings=kiosk.settings)
    synthetic.write_result(writer, kiosk.studies["pending"], triage="radiologist_review", score=0.55)
    page.wait_for_selector("#triage", timeout=20_000)
    assert page.inner_text("#triage") == "Radyolog değerlendirmesi"

    # USB upload: a Turkish file picker, then per-file results.
    files = []
    for i, ds in enumerate(mg.screening_study(mg.fake_patient(3), seed=3, size=96)):
        f = tmp_path / "usb" / "DICOM" / f"IM{i:04d}"
        mg.write(ds, f)
        files.append(str(f))
    (tmp_path / "usb" / "BENIOKU.txt").write_text("Bu bir DICOM dosyası değil", encoding="utf-8")
    files.append(str(tmp_path / "usb" / "BENIOKU.txt"))
    page.click("text=USB'den yükle")
    assert page.inner_text("#upload-files-button") == "Dosya seç" and page.inner_text("#upload-files-chosen") == "Dosya seçilmedi"
    assert page.locator("#upload-files").bounding_box()["width"] <= 1  # the browser's own "Choose Files" button never shows
    page.set_input_files("#upload-files", files)
    assert page.inner_text("#upload-files-chosen") == "5 dosya seçildi"
    page.click("#upload-submit")
    page.wait_for_selector("#upload-results")
    assert page.inner_text("#upload-summary") == "4 / 5 dosya kaydedildi."
    assert "Bu bir DICOM dosyası değil; dosya alınmadı." in page.inner_text("#upload-results")
    _shot(page, shots / "08-usb-yukleme.png")

    # English is one tap away.
    page.click("a.lang >> text=EN")
    page.goto(url + "/worklist")
    assert page.inner_text("h1") == "Worklist" and page.inner_text("#net-badge") == "Offline"

    assert outside == [], f"the kiosk reached outside the box: {outside}"
    assert failed == [f"401 POST {url}/login"], "only the wrong password may fail"
    context.close()


SIZES = [(1024, 600), (1366, 768), (768, 1024)]


@pytest.mark.parametrize(("width", "height"), SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_small_screens_show_the_whole_study_and_axe_finds_no_serious_violation(served, browser, shots: Path, width: int, height: int):
    """At a 1024x600 kiosk, a 1366x768 laptop and a 768x1024 tablet: the result, the four views and the actions on the first
    screen; a skip link and a visible focus ring; axe-core (bundled with axe-playwright-python, run in the page) reports no
    serious or critical violation on any page."""
    kiosk, url = served
    writer = IngestService(db=kiosk.box.db, keystore=kiosk.box.keystore, queue=kiosk.box.queue, settings=kiosk.settings)
    synthetic.write_result(writer, kiosk.studies["pending"], triage="radiologist_review", score=0.55)  # the orange label, on the list
    context = browser.new_context(viewport={"width": width, "height": height}, locale="tr-TR")
    page = context.new_page()
    page.goto(url + "/login")
    page.fill("input[name=username]", "doktor")
    page.fill("input[name=password]", PASSWORDS["doktor"])
    page.click("button[type=submit]")
    page.wait_for_url(url + "/worklist")
    # The first Tab reaches the skip link, shown with a focus ring; Enter on it lands in the page's content.
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.className") == "skip" and _in_view(page, ".skip")
    assert page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"
    page.keyboard.press("Tab")
    assert page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle") == "solid"  # the ring, on whatever comes next
    violations = {"login": _axe(page, url + "/login?m=auth.required")}
    uid = kiosk.studies["priority"]
    for name, path in [("worklist", "/worklist"), ("study", f"/studies/{uid}"), ("recalls", "/recalls"), ("upload", "/upload")]:
        violations[name] = _axe(page, url + path)
        if name in ("worklist", "study"):
            _shot(page, shots / f"{'20-is-listesi' if name == 'worklist' else '21-tetkik'}-{width}x{height}.png")
        if name == "study":
            _assert_fits(page)
            page.locator("#views .frame").first.click()  # the viewer, open over the study
            violations["viewer"] = _axe(page, None)
            assert page.is_visible("#viewer-legend")
    assert violations == {k: [] for k in violations}
    context.close()


AXE_JS = Path(pytest.importorskip("axe_playwright_python", reason="axe-playwright-python (it bundles axe-core) is not installed").__file__).parent / "axe.min.js"


def _axe(page, address: str) -> list[str]:
    """axe-core's serious and critical violations on the page at ``address`` (None: as it is now), as 'rule: element' lines."""
    if address:
        page.goto(address)
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
    page.evaluate(AXE_JS.read_text(encoding="utf-8"))  # evaluated by the test driver: the page's CSP does not apply
    found = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
                          ".filter(v => v.impact === 'serious' || v.impact === 'critical').map(v => v.id + ': ' + v.nodes[0].target.join(' '))")
    return found


def _in_view(page, selector: str) -> bool:
    """The element is on screen (not scrolled away, not behind the status bar)."""
    return page.evaluate("""s => { const r = document.querySelector(s).getBoundingClientRect();
        const bar = document.getElementById('statusbar').getBoundingClientRect().top;
        return r.height > 0 && r.top >= 0 && r.bottom <= Math.min(window.innerHeight, bar); }""", selector)


def _assert_fits(page) -> None:
    """The study's first screen: the category, the score, the four views and the actions, none below the fold."""
    page.evaluate("() => window.scrollTo(0, 0)")
    for selector in ("#triage", "#study-score", "#referral-link", "#print-link"):
        assert _in_view(page, selector), f"{selector} is off the first screen"
    for i in range(4):
        assert page.evaluate("""i => { const r = document.querySelectorAll('#views img.base')[i].getBoundingClientRect();
            return r.top >= 0 && r.bottom <= document.getElementById('statusbar').getBoundingClientRect().top && r.height > 80; }""", i), f"view {i}"


def _wait(condition, timeout_s: float = 10.0):
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _shot(page, path: Path, *, locator=None) -> None:
    """A screenshot, quantized to 256 colours so the committed PNGs stay small."""
    from PIL import Image

    (locator or page).screenshot(path=str(path))
    with Image.open(path) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


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
        context = browser.new_context(viewport={"width": 1366, "height": 768}, accept_downloads=True, locale="tr-TR")
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
        _shot(page, shots / "13-is-listesi-eksik-cekim.png")

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
        _shot(page, shots / "12-gercek-model-sonucu.png")
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
        _shot(page, shots / "14-eksik-cekim.png")
        printed = page.request.get(url + page.get_attribute("#print-link", "data-print"))
        text = " ".join(PdfReader(io.BytesIO(printed.body())).pages[0].extract_text().split())
        assert "EKSİK ÇEKİM" in text and "Sol MLO eksik." in text and "Çekim skoru" not in text
        context.close()
    finally:
        running.stop()
        k.services.close()
        k.box.close()
