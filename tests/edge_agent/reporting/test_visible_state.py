"""A report that cannot go out is visible where people look: the kiosk's study page, the console's Queues screen, `mammo report list`."""

from __future__ import annotations

import json

from litestar.testing import TestClient
from textual.widgets import Static

from edge_agent.cli import main
from edge_agent.console import data
from edge_agent.console.app import Console
from kiosk_ui.app import create_app
from kiosk_ui.services import KioskServices
from tests.edge_agent.test_console import SIZE, show
from tests.kiosk_ui.conftest import FAST_PASSWORDS, PASSWORDS, sign_in

from .conftest import report_worker


def stuck_report(clinic_factory, fhir_server):
    """A confirmed study whose endpoint answers 500: the report waits, retrying."""
    clinic = clinic_factory(report_fhir_enabled="true", report_fhir_url=fhir_server.url)
    fhir_server.store.mode = "500"
    uid = clinic.screen(seed=51)
    clinic.confirm(uid)
    worker = report_worker(clinic)
    worker.run_once()
    worker.run_once()
    return clinic, uid


def test_the_kiosk_study_page_shows_the_report_state_in_turkish(clinic_factory, fhir_server):
    clinic, uid = stuck_report(clinic_factory, fhir_server)
    services = KioskServices.from_box(clinic.box, passwords=FAST_PASSWORDS)
    try:
        services.add_user("doktor", PASSWORDS["doktor"], "doctor", "Dr. Zeynep Işık")
        with TestClient(create_app(clinic.box.settings, services), base_url="http://kiosk.local") as client:
            assert sign_in(client, "doktor").status_code == 303
            page = client.get(f"/studies/{uid}").text
    finally:
        services.close()
    assert 'id="delivery-fhir" data-state="retrying"' in page
    assert "Ulusal kayıt raporu: gönderilemedi, yeniden denenecek" in page
    assert "HTTP 500" not in page  # the endpoint's English answer is for the technician, not the doctor's page


async def test_the_console_queues_screen_shows_why_a_report_is_stuck(clinic_factory, fhir_server):
    clinic, uid = stuck_report(clinic_factory, fhir_server)
    view = data.queues(clinic.box)
    assert ("fhir", "retrying", 1) in view.reports and "HTTP 500" in view.report_problem
    app = Console(clinic.box, "en")
    async with app.run_test(size=SIZE) as pilot:
        await show(app, pilot, "2")
        line = app.query_one("#reports-line", Static)
        shown, region = str(line.render()), line.region
    assert "Report to the national record: not delivered yet, will retry 1" in shown and "HTTP 500" in shown
    assert line.visible and region.height >= 2 and region.bottom <= SIZE[1]  # on the 80x24 screen, not scrolled off


def test_mammo_report_list_gives_the_reason(clinic_factory, fhir_server, monkeypatch, capsys):
    clinic, uid = stuck_report(clinic_factory, fhir_server)
    monkeypatch.setenv("MAMMO_HOME", str(clinic.box.settings.home))
    monkeypatch.setenv("MAMMO_KEYSTORE_PASSPHRASE", "test-passphrase")
    capsys.readouterr()
    assert main(["report", "list", "--state", "retrying", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["counts"]["fhir:retrying"] == 1
    [row] = out["deliveries"]
    assert row["study_uid"] == uid and "HTTP 500: refused (500)" in row["detail"] and row["attempts"] == 1
