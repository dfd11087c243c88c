"""Pure parts of the kiosk: catalogs, Turkish casing, upload name checks, status and lockout rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kiosk_ui import auth, throttle
from kiosk_ui.app import printable
from kiosk_ui.i18n import LANGUAGES, catalog, person_name, search_fold, tr_lower, tr_title, tr_upper
from kiosk_ui.records import STATUSES, TRIAGES, AuditQuery, study_status
from kiosk_ui.uploads import looks_like_dicom, safe_label

PKG = Path(__file__).resolve().parents[2] / "kiosk_ui"


def _keys(lang: str) -> set[str]:
    return set(json.loads((PKG / "i18n" / f"{lang}.json").read_text(encoding="utf-8")))


def test_every_key_exists_in_every_language():
    tr, en = _keys("tr"), _keys("en")
    assert tr == en, f"only in tr: {sorted(tr - en)}; only in en: {sorted(en - tr)}"
    for lang in LANGUAGES:
        assert all(v.strip() for v in json.loads((PKG / "i18n" / f"{lang}.json").read_text(encoding="utf-8")).values())


def test_every_key_the_code_uses_is_in_the_catalogs():
    used: set[str] = set()
    for path in list((PKG / "templates").glob("*.html")) + list(PKG.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        used |= set(re.findall(r"""\bt\(\s*['"]([a-z_]+\.[a-z_.]+)['"]""", text))
        used |= set(re.findall(r"""(?:Error|Rejected|Denied|NotFound|UploadOutcome)\([^'"]*['"]([a-z_]+\.[a-z_]+)['"]""", text))
        used |= set(re.findall(r"""['"]((?:upload|auth|error)\.(?!html)[a-z_]+)['"]""", text))
    dynamic = {f"role.{r}" for r in auth.ROLES} | {f"status.{s}" for s in STATUSES} | {f"triage.{t}" for t in TRIAGES} | {f"triage.{t}.{x}" for t in TRIAGES for x in ("explain", "todo")}
    missing = sorted((used | dynamic) - _keys("tr"))
    assert not missing, f"keys used but not in the catalogs: {missing}"


def test_turkish_casing():
    assert tr_upper("istanbul ılıca") == "İSTANBUL ILICA"
    assert tr_lower("İSTANBUL ILICA") == "istanbul ılıca"
    assert tr_lower("İ") == "i" and len(tr_lower("İ")) == 1  # no stray combining dot
    assert tr_title("çelik ayşe İPEK ışık") == "Çelik Ayşe İpek Işık"
    assert "i".upper() == "I"  # why tr_upper exists


def test_dicom_names_read_as_the_doctor_writes_them():
    assert person_name("ÇELİK^AYŞE") == "Ayşe ÇELİK"
    assert person_name("yıldız^özlem^işıl") == "Özlem İşıl YILDIZ"
    assert person_name("IŞIK^ILGIN") == "Ilgın IŞIK"
    assert person_name("DOĞAN") == "DOĞAN"
    assert person_name("") == ""
    assert person_name("IŞIK^İPEK", "en") == "İpek IŞIK"  # Turkish names keep Turkish casing on the English screen
    assert person_name("ışık^ılgın", "en") == "Ilgın IŞIK"


def test_search_folding_meets_keyboards_without_turkish_letters():
    assert search_fold("ŞAHİN") == search_fold("sahin") == search_fold("Şahin") == "sahin"
    assert search_fold("IŞIK") == "isik"


def test_catalog_formats_parameters_in_both_languages():
    assert catalog("tr")("upload.summary", ok=3, total=4) == "3 / 4 dosya kaydedildi."
    assert catalog("en")("upload.summary", ok=3, total=4) == "3 of 4 files stored."
    assert catalog("xx").lang == "tr"


@pytest.mark.parametrize("name", ["../a.dcm", "a/../../b", "/etc/passwd", "C:\\x.dcm", "a\\b", "~/.ssh/id", "a\x00b", "", "a//b", "./a", "x" * 300, "a\u202eb"])
def test_path_tricks_in_upload_names_are_refused(name: str):
    assert safe_label(name) is None


@pytest.mark.parametrize("name", ["IM0001", "DICOM/IMG/IM0001.dcm", "Çekim 1.dcm"])
def test_ordinary_upload_names_pass(name: str):
    assert safe_label(name) == name


def test_dicom_part10_is_recognised_by_its_preamble():
    assert looks_like_dicom(b"\0" * 128 + b"DICM" + b"rest")
    assert not looks_like_dicom(b"%PDF-1.7" + b"\0" * 200)
    assert not looks_like_dicom(b"DICM")


def test_study_status_rule():
    assert study_status("open", None, None) == "receiving"
    assert study_status("complete", "ready", None) == "waiting"
    assert study_status("complete", None, None) == "waiting"
    assert study_status("complete", "leased", None) == "analysing"
    assert study_status("complete", "dead", None) == "failed"
    assert study_status("complete", "done", "incomplete") == "incomplete"


def test_lockout_rule():
    policy = auth.LockoutPolicy(max_failures=3, lock_s=60)
    assert auth.lock_after(1, 100.0, policy) is None
    assert auth.lock_after(3, 100.0, policy) == 160.0
    assert auth.is_locked(160.0, 159.0) and not auth.is_locked(160.0, 161.0) and not auth.is_locked(None, 0)


def test_roles():
    assert auth.may("doctor", "feedback") and auth.may("doctor", "referral")
    assert not auth.may("technician", "study") and auth.may("technician", "upload")
    assert not auth.may("radiologist", "upload") and not auth.may("nobody", "worklist")


def test_tokens_compare_in_constant_time_and_refuse_empty():
    assert auth.same_token("abc", "abc")
    assert not auth.same_token("abc", "abd") and not auth.same_token("", "") and not auth.same_token(None, "x")


def test_failed_sign_in_bucket_allows_a_burst_then_one_per_refill():
    policy = throttle.RatePolicy(burst=3, refill_s=10.0)
    bucket = None
    for _ in range(3):
        bucket, wait = throttle.take(bucket, 100.0, policy)
        assert bucket is not None and wait == 0
    assert throttle.take(bucket, 100.0, policy) == (None, 10.0)
    assert throttle.take(bucket, 104.0, policy) == (None, 6.0)  # 0.4 of a token earned back: 6 s to go
    later, wait = throttle.take(bucket, 110.0, policy)
    assert later is not None and wait == 0 and later.tokens == 0
    assert throttle.level(bucket, 10_000.0, policy) == 3  # never more than the burst
    assert throttle.give_back(later, 110.0, policy).tokens == 1  # a right password returns its token
    assert throttle.is_full(throttle.Bucket(0, 0), 30.0, policy) and not throttle.is_full(throttle.Bucket(0, 0), 29.0, policy)
    assert throttle.retry_after_header(0.2) == "1" and throttle.retry_after_header(6.0) == "6"


def test_audit_query_reads_filters_and_ignores_malformed_ones():
    q = AuditQuery.parse({"user": " doktor ", "action": "login", "from": "2026-11-10", "to": "2026-11-11", "page": "3"})
    assert (q.username, q.action, q.since_day, q.until_day, q.page) == ("doktor", "login", "2026-11-10", "2026-11-11", 3)
    since, until = q.bounds("Europe/Istanbul")
    assert until - since == 2 * 86400  # both days whole (no time zone changes clocks that week)
    assert since == 1794258000  # 2026-11-10 00:00 in Istanbul (UTC+3) is 2026-11-09 21:00 UTC, whatever zone the box runs in
    assert q.link(4) == "user=doktor&action=login&from=2026-11-10&to=2026-11-11&page=4"
    assert AuditQuery.parse({"user": "a b"}).link(1) == "user=a+b"
    bad = AuditQuery.parse({"from": "2026-13-40", "to": "yesterday", "page": "-1"})
    assert (bad.since_day, bad.until_day, bad.page) == ("", "", 1) and bad.bounds("Europe/Istanbul") == (None, None)


def test_log_text_is_one_line_whatever_the_path_holds():
    assert printable("/studies/a\nFORGED\x00\u2028x") == "/studies/a%0AFORGED%00%E2%80%A8x"
    assert printable("/studies/1.2.3/Çelik") == "/studies/1.2.3/Çelik"
