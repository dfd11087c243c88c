"""``mammo user ...``, ``mammo bench kiosk`` and the daemon hook that serves the kiosk."""

from __future__ import annotations

import argparse
import io
import json
import threading

import httpx
import pytest

from edge_agent.box import open_box
from edge_agent.errors import KioskError
from edge_agent.settings import Settings
from kiosk_ui import cli
from kiosk_ui.server import free_port, start_services
from kiosk_ui.services import KioskServices


def run(settings: Settings, argv: list[str], stdin: str = "", capsys=None) -> tuple[int, dict | None]:
    parser = argparse.ArgumentParser(prog="mammo")
    sub = parser.add_subparsers()
    bench_sub = sub.add_parser("bench").add_subparsers()
    cli.register(sub, bench_sub)
    args = parser.parse_args(argv)
    args.settings, args.stdin = settings, io.StringIO(stdin)
    rc = args.handler(args)
    out = capsys.readouterr().out.strip().splitlines() if capsys else []
    return rc, (json.loads(out[-1]) if out and "--json" in argv else None)


@pytest.fixture
def cli_settings(tmp_path) -> Settings:
    return Settings.load(env={"MAMMO_HOME": str(tmp_path / "home"), "MAMMO_KEYSTORE_PASSPHRASE": "test-passphrase"})


def test_user_add_creates_an_account_that_can_sign_in(cli_settings: Settings, capsys):
    rc, out = run(cli_settings, ["user", "add", "ayse.hekim", "--role", "doctor", "--name", "Dr. Ayşe Işık", "--json"], "çok-gizli-parola\n", capsys)
    assert rc == 0 and out["role"] == "doctor" and out["kiosk_url"].startswith("http://")
    rc, out = run(cli_settings, ["user", "list", "--json"], capsys=capsys)
    assert out["users"] == [{"username": "ayse.hekim", "name": "Dr. Ayşe Işık", "role": "doctor", "locked": False}]
    box = open_box(cli_settings, interactive=False)
    svc = KioskServices.from_box(box)
    try:
        token, session = svc.sign_in("ayse.hekim", "çok-gizli-parola")
        assert session.user.full_name == "Dr. Ayşe Işık" and token
    finally:
        svc.close()
        box.close()


def test_user_add_refuses_a_short_password_and_a_duplicate(cli_settings: Settings, capsys):
    with pytest.raises(KioskError, match="at least 10"):
        run(cli_settings, ["user", "add", "kisa", "--role", "doctor"], "kisa\n")
    run(cli_settings, ["user", "add", "ali", "--role", "admin"], "yeterince-uzun\n")
    with pytest.raises(KioskError, match="already exists"):
        run(cli_settings, ["user", "add", "ALI", "--role", "doctor"], "yeterince-uzun\n")


def test_passwd_and_unlock(cli_settings: Settings, capsys):
    run(cli_settings, ["user", "add", "ali", "--role", "doctor"], "ilk-parola-123\n")
    rc, out = run(cli_settings, ["user", "passwd", "ali", "--json"], "yeni-parola-456\n", capsys)
    assert rc == 0 and out["changed"]
    rc, out = run(cli_settings, ["user", "unlock", "ali", "--json"], capsys=capsys)
    assert out["unlocked"]


def test_mammo_up_serves_the_kiosk_and_creates_the_first_admin(tmp_path):
    settings = Settings.load(env={"MAMMO_HOME": str(tmp_path / "home"), "MAMMO_KEYSTORE_PASSPHRASE": "test-passphrase"},
                             kiosk_port=free_port())
    box = open_box(settings, interactive=False)
    stop = threading.Event()
    threads = start_services(box, stop)
    try:
        password_file = settings.secrets_dir / "kiosk-admin-password"
        assert (password_file.stat().st_mode & 0o777) == 0o600
        base = f"http://{settings.kiosk_host}:{settings.kiosk_port}"
        with httpx.Client(base_url=base, timeout=10, follow_redirects=True) as c:
            page = c.get("/worklist")
            assert "Giriş yap" in page.text
            import re

            token = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)
            r = c.post("/login", data={"_csrf": token, "username": "admin", "password": password_file.read_text().strip()})
            assert r.url.path == "/worklist" and "İş listesi" in r.text
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        box.close()
    assert not any(t.is_alive() for t in threads)


def test_bench_kiosk_prints_pages_beside_the_peers(cli_settings: Settings, capsys):
    rc, out = run(cli_settings, ["bench", "kiosk", "--studies", "300", "--requests", "10", "--json"], capsys=capsys)
    assert rc == 0
    assert {"worklist", "study", "static_css_same_server", "http_server_same_html"} <= set(out["pages"])
    assert out["studies_in_database"] == 300 and out["worklist_rows_rendered"] == 200
    assert out["ratio_worklist_vs_http_server_p50"] > 0
