"""Sign-in that tells no names, failures limited per address and per name, a trail that floods cannot bury.

Real app (Litestar's TestClient), real SQLite file, real Argon2 (cheap parameters), real threads.
"""

from __future__ import annotations

import logging
import re
import threading

import pytest
from argon2 import PasswordHasher
from litestar.testing import TestClient

from edge_agent.clinic_time import local
from edge_agent.errors import AuthError
from edge_agent.ingest import mg
from kiosk_ui import signin
from kiosk_ui.app import create_app
from kiosk_ui.auth import Passwords
from kiosk_ui.services import KioskServices

from .conftest import PASSWORDS, Kiosk, make_kiosk, message_of, sign_in

RANDOM_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # auth.new_token(): 32 random bytes, URL-safe base64


class CountingPasswords(Passwords):
    """Real Argon2id that counts its verifications, passed in through KioskServices(passwords=...)."""

    def __init__(self) -> None:
        super().__init__(PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))
        self.verified: list[bool] = []  # whether each verify had a stored hash (a real account)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        self.verified.append(stored_hash is not None)
        return super().verify(stored_hash, password)


@pytest.fixture
def counted(tmp_path):
    passwords = CountingPasswords()
    k = make_kiosk(tmp_path / "home", passwords=passwords, kiosk_lockout_failures=3)
    yield k, passwords
    k.services.close()
    k.box.close()


def _answer(r) -> tuple:
    """Status, headers and body with the per-response random form token blanked out."""
    headers = sorted((k, RANDOM_TOKEN.sub("TOKEN", v)) for k, v in r.headers.multi_items())
    return r.status_code, headers, RANDOM_TOKEN.sub("TOKEN", r.text)


def test_an_unknown_name_gets_the_same_answer_after_the_same_work_as_a_wrong_password(counted):
    k, passwords = counted
    with TestClient(create_app(k.settings, k.services)) as c:
        for attempt in range(5):  # wrong, wrong, now locked, locked, locked
            real = sign_in(c, "doktor", "yanlis-parola")
            made_up = sign_in(c, "kimse-yok", "yanlis-parola")
            assert _answer(real) == _answer(made_up), f"attempt {attempt + 1} tells the names apart"
            assert real.status_code == 401 and not any(h.startswith("kiosk_session=") for h in real.headers.get_list("set-cookie"))
        assert passwords.verified == [True, False] * 3  # a full Argon2 check for both until the name locks, none after
        assert [message_of(sign_in(c, n, "yanlis-parola").text) for n in ("doktor", "kimse-yok")] == [
            "Bu hesap çok sayıda hatalı giriş nedeniyle geçici olarak kilitli. Biraz sonra tekrar deneyin veya yöneticinize başvurun."] * 2
        assert sign_in(c, "doktor").status_code == 401  # the right password does not open a locked account
    assert [a[0] for a in k.audit("account_locked")] == ["doktor", "kimse-yok"]


def test_parallel_wrong_passwords_each_count_once(tmp_path):
    k = make_kiosk(tmp_path / "home", kiosk_lockout_failures=1000, kiosk_signin_account_burst=1000, kiosk_signin_source_burst=1000)
    threads_n, tries = 8, 5
    # One connection per thread, as separate kiosk processes would have.
    services = [KioskServices.from_box(k.box, clock=k.clock, passwords=k.services.passwords) for _ in range(threads_n)]
    start, errors = threading.Barrier(threads_n), []

    def hammer(svc: KioskServices) -> None:
        start.wait()
        for _ in range(tries):
            try:
                svc.sign_in("doktor", "yanlis-parola", source="10.0.0.7")
            except AuthError as exc:
                errors.append(exc.message_key)

    try:
        workers = [threading.Thread(target=hammer, args=(svc,)) for svc in services]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == ["auth.wrong"] * (threads_n * tries)
        assert signin.failure_count(k.box.db, "doktor") == threads_n * tries
        assert len(k.audit("login_failed")) == threads_n * tries
    finally:
        for svc in services:
            svc.close()
        k.services.close()
        k.box.close()


def test_parallel_wrong_passwords_lock_after_exactly_the_limit(tmp_path):
    k = make_kiosk(tmp_path / "home", kiosk_lockout_failures=4)
    services = [KioskServices.from_box(k.box, clock=k.clock, passwords=k.services.passwords) for _ in range(4)]
    start, keys = threading.Barrier(4), []

    def once(svc: KioskServices) -> None:
        start.wait()
        try:
            svc.sign_in("doktor", "yanlis-parola")
        except AuthError as exc:
            keys.append(exc.message_key)

    try:
        workers = [threading.Thread(target=once, args=(svc,)) for svc in services]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert sorted(keys) == ["auth.locked_now", "auth.wrong", "auth.wrong", "auth.wrong"]
        assert [a[0] for a in k.audit("account_locked")] == ["doktor"]
    finally:
        for svc in services:
            svc.close()
        k.services.close()
        k.box.close()


def test_a_flood_of_failed_sign_ins_gets_429_and_real_entries_stay_findable(kiosk: Kiosk):
    uid = kiosk.studies["priority"]
    def client() -> TestClient:  # three people, three browsers, one box
        return TestClient(create_app(kiosk.settings, kiosk.services))

    with client() as admin, client() as doctor, client() as attacker:
        assert sign_in(admin, "yonetici").status_code == 303
        assert sign_in(doctor, "doktor").status_code == 303
        doctor.get(f"/studies/{uid}")  # the entry someone will look for later

        # 210 tries with one made-up name: 10 are answered (and audited), then 429 without checking anything.
        answers = [sign_in(attacker, "sahte-kullanici", f"tahmin-{i}") for i in range(210)]
        burst = kiosk.settings.kiosk_signin_account_burst
        assert [r.status_code for r in answers] == [401] * burst + [429] * (210 - burst)
        assert answers[-1].headers["retry-after"] == str(int(kiosk.settings.kiosk_signin_account_refill_s))
        assert message_of(answers[-1].text).startswith("Bu bilgisayardan ya da bu kullanıcı adıyla çok sayıda hatalı giriş denendi.")
        assert kiosk.count("kiosk_audit", "username = ?", ("sahte-kullanici",)) <= burst + 2  # not 210
        assert len(kiosk.audit("login_throttled")) == 1

        # A new name for every try: the address runs out after kiosk_signin_source_burst failures in all.
        left = kiosk.settings.kiosk_signin_source_burst - burst
        rotating = [sign_in(attacker, f"isim-{i}", "tahmin").status_code for i in range(50)]
        assert rotating == [401] * left + [429] * (50 - left)
        # Even the right password waits from that address; another address still signs in.
        assert sign_in(attacker, "radyolog").status_code == 429
        token, _ = kiosk.services.sign_in("radyolog", PASSWORDS["radyolog"], source="10.0.0.23")
        assert token

        for i in range(250):  # and enough ordinary entries to push the real one off the first page
            kiosk.services.audit("teknisyen", "view_worklist", None, f"{i} row(s)")

        def rows(query: str) -> list[tuple[str, str, str]]:
            html = admin.get("/audit" + query).text
            return re.findall(r"<tr><td>[^<]*</td><td>([^<]*)</td><td data-action=\"([^\"]*)\">[^<]*</td><td class=\"mono\">([^<]*)</td>", html)

        assert ("doktor", "view_study", uid[:24]) not in rows("")
        assert rows("?user=DOKTOR&action=view_study") == [("doktor", "view_study", uid[:24])]
        assert rows(f"?study={uid}&action=view_study") == [("doktor", "view_study", uid[:24])]
        today = local(kiosk.clock.now, kiosk.settings.timezone).date()  # the clinic's day, not the machine's (UTC)
        assert ("doktor", "view_study", uid[:24]) in rows(f"?user=doktor&from={today}&to={today}")
        assert rows(f"?user=doktor&from={today.replace(year=today.year + 1)}") == []

        # Paging: follow the "older" links from the first page until the entry turns up.
        link, seen, pages = "/audit", [], 0
        while link and pages < 10:
            html = admin.get(link).text
            pages += 1
            seen += re.findall(r'<td>(doktor)</td><td data-action="(view_study)">', html)
            m = re.search(r'href="(/audit\?[^"]*)" rel="next"', html)
            link = m.group(1).replace("&amp;", "&") if m else ""
        assert seen == [("doktor", "view_study")] and pages == -(-kiosk.count("kiosk_audit") // 100)  # the last page, 100 a page
        assert 'rel="prev"' in admin.get("/audit?page=2").text and 'rel="prev"' not in admin.get("/audit").text


def test_worklist_searches_and_image_fetches_are_audited(doctor: TestClient, kiosk: Kiosk):
    doctor.get("/worklist?q=%C5%9Fahin")
    assert kiosk.audit("search_worklist") == [("doktor", None, "'şahin': 1 row(s)")]
    uid = kiosk.studies["priority"]
    sop = kiosk.sops(uid)[0]
    assert doctor.get(f"/studies/{uid}/views/{sop}/image.png").status_code == 200
    assert doctor.get(f"/studies/{uid}/views/{sop}/heatmap.png").status_code == 200
    assert kiosk.audit("view_image") == [("doktor", uid, f"{sop} image"), ("doktor", uid, f"{sop} heatmap")]
    other = kiosk.sops(kiosk.studies["normal"])[0]
    assert doctor.get(f"/studies/{uid}/views/{other}/image.png").status_code == 404
    assert len(kiosk.audit("view_image")) == 2  # nothing was shown, so nothing was accessed


def test_a_patient_id_with_letters_is_found_in_any_case(doctor: TestClient, kiosk: Kiosk):
    who = mg.FakePatient("DEMİR^ZEYNEP", "TR12AB-Kİ9", "19750101")
    for ds in mg.screening_study(who, seed=7, size=64):
        kiosk.services.ingest.ingest_bytes(mg.to_bytes(ds), source="test", label="letters")

    def names(q: str) -> list[str]:
        return re.findall(r'class="name">([^<]+)<', doctor.get("/worklist", params={"q": q}).text)

    for q in ("TR12AB-Kİ9", "tr12ab", "Tr12aB-ki9", "KI9"):
        assert names(q) == ["Zeynep DEMİR"], q


@pytest.mark.parametrize("path", ["/schema", "/schema/swagger", "/schema/openapi.json", "/schema/redoc", "/schema/openapi.yaml"])
def test_no_api_schema_pages(client: TestClient, kiosk: Kiosk, path: str):
    assert client.get(path, follow_redirects=False).status_code == 404
    sign_in(client, "yonetici")
    assert client.get(path).status_code == 404


def test_control_characters_in_a_path_get_404_and_one_escaped_log_line(client: TestClient, kiosk: Kiosk, caplog):
    caplog.set_level(logging.INFO)
    for path in ("/static/kiosk.css%00", "/static/a%0Ab", "/studies/x%0AFORGED%20LINE", "/worklist%E2%80%A8x"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 404, path
        assert "bulunamadı" in message_of(r.text)
    messages = [rec.getMessage() for rec in caplog.records]
    assert not any(ch in m for m in messages for ch in "\n\r\x00\u2028")
    assert any("/studies/x%0AFORGED LINE" in m for m in messages)
    assert sign_in(client, "doktor").status_code == 303 and "Ayşe ÇELİK" in client.get("/worklist").text
