"""Reports through the durable queue to a FHIR endpoint on loopback: once, across restarts, and visibly stuck when it fails."""

from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.bundle import Bundle

from edge_agent.cli import main
from edge_agent.errors import SettingsError
from edge_agent.reporting import state
from edge_agent.reporting.service import check_settings, sweep_confirmed

from .conftest import box_settings, closed_port_url, report_worker, run_until


def fhir_state(clinic, uid):
    return state.get(clinic.box.db, uid, "fhir")


def actions(clinic, uid):
    return [r[0] for r in clinic.box.db.execute("SELECT action FROM audit_log WHERE object = ? AND actor = 'reporting' ORDER BY seq", [uid])]


def test_a_confirmed_study_reaches_the_endpoint_once_even_across_a_restart(clinic_factory, fhir_server):
    clinic = clinic_factory(report_fhir_enabled="true", report_fhir_url=fhir_server.url)
    uid = clinic.screen(seed=11)
    clinic.confirm(uid)
    assert report_worker(clinic).run(drain=True).done == 2  # the trigger from inference, then the send
    st = fhir_state(clinic, uid)
    assert st.state == "delivered" and st.identifier.endswith(uid) and st.delivered_at is not None
    store = fhir_server.store
    assert len(store.requests) == 1 and store.count("DiagnosticReport") == 1 and store.count("Patient") == 1
    Bundle.model_validate(store.requests[0]["bundle"])
    assert store.requests[0]["headers"]["Content-Type"].startswith("application/fhir+json")
    assert actions(clinic, uid) == ["report_send", "report_delivered"]
    sent = json.loads(clinic.box.db.execute("SELECT details FROM audit_log WHERE action = 'report_send'").fetchone()[0])
    assert sent["endpoint"] == fhir_server.url and sent["identifier"] == st.identifier  # the endpoint, never a token or the patient
    # restart: a new box process on the same home; the job was acked, and a job naming the study again sends nothing
    home_settings = clinic.box.settings
    clinic.close()
    again = clinic_factory(report_fhir_enabled="true", report_fhir_url=fhir_server.url)
    assert again.box.settings.home == home_settings.home
    again.box.queue.enqueue("report", {"kind": "fhir", "study_uid": uid}, key="fhir:manual-again")
    assert report_worker(again).run(drain=True).done == 1
    assert len(store.requests) == 1 and store.count("DiagnosticReport") == 1


def test_a_lost_answer_is_resent_and_the_endpoint_creates_nothing_twice(clinic_factory, fhir_server):
    """The endpoint creates the resources, then answers after the box gave up: the resend finds them there."""
    clinic = clinic_factory(report_fhir_enabled="true", report_fhir_url=fhir_server.url, report_fhir_timeout_s="0.5")
    uid = clinic.screen(seed=12)
    clinic.confirm(uid)
    store = fhir_server.store
    store.mode, store.slow_s = "slow", 2.0
    worker = report_worker(clinic)
    worker.run_once()  # the trigger from inference
    worker.run_once()  # the first send
    st = fhir_state(clinic, uid)
    assert st.state == "retrying" and "did not answer within 0.5 s" in st.detail
    assert store.count("DiagnosticReport") == 1  # the server did create it
    store.mode = "ok"
    assert run_until(worker, lambda: fhir_state(clinic, uid).state == "delivered")  # the retry, after its (test-sized) backoff
    assert len(store.requests) == 2 and store.count("DiagnosticReport") == 1 and store.count("Patient") == 1
    assert "0 created" in fhir_state(clinic, uid).detail and fhir_state(clinic, uid).attempts == 2
    assert actions(clinic, uid) == ["report_send", "report_send_failed", "report_send", "report_delivered"]


@pytest.mark.parametrize("mode, reason", [
    ("down", "unreachable: ConnectError"),
    ("400", "HTTP 400: refused (400)"),
    ("500", "HTTP 500: refused (500)"),
    ("garbage", "not JSON"),
    ("wrong-bundle", "not a transaction-response Bundle"),
])
def test_an_endpoint_that_fails_keeps_the_report_queued_with_the_reason(clinic_factory, fhir_server, mode, reason):
    url = closed_port_url() if mode == "down" else fhir_server.url
    clinic = clinic_factory(report_fhir_enabled="true", report_fhir_url=url)
    fhir_server.store.mode = mode
    uid = clinic.screen(seed=13)
    clinic.confirm(uid)
    worker = report_worker(clinic)
    worker.run_once()  # the trigger
    worker.run_once()  # the first send
    st = fhir_state(clinic, uid)
    assert st.state == "retrying" and reason in st.detail, st
    job = clinic.box.db.execute("SELECT state, last_error, max_attempts FROM jobs WHERE queue = 'report' AND key = ?", [f"fhir:{uid}"]).fetchone()
    assert job[0] == "ready" and reason in job[1] and job[2] == clinic.box.settings.report_max_attempts
    assert fhir_server.store.count("DiagnosticReport") == 0
    assert actions(clinic, uid) == ["report_send", "report_send_failed"]


def test_after_the_last_attempt_the_report_shows_failed_and_report_send_puts_it_back(clinic_factory, fhir_server, monkeypatch, capsys):
    clinic = clinic_factory(report_fhir_enabled="true", report_fhir_url=fhir_server.url, report_max_attempts="2")
    fhir_server.store.mode = "500"
    uid = clinic.screen(seed=14)
    clinic.confirm(uid)
    worker = report_worker(clinic)
    assert run_until(worker, lambda: fhir_state(clinic, uid).state == "failed")
    st = fhir_state(clinic, uid)
    assert st.state == "failed" and st.attempts == 2 and "mammo report send" in st.detail
    fhir_server.store.mode = "ok"
    monkeypatch.setenv("MAMMO_HOME", str(clinic.box.settings.home))
    monkeypatch.setenv("MAMMO_KEYSTORE_PASSPHRASE", "test-passphrase")
    monkeypatch.setenv("MAMMO_REPORT_FHIR_ENABLED", "true")
    monkeypatch.setenv("MAMMO_REPORT_FHIR_URL", fhir_server.url)
    assert main(["report", "send", uid, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["state"] == "queued"
    assert run_until(worker, lambda: fhir_state(clinic, uid).state == "delivered")
    assert fhir_server.store.count("DiagnosticReport") == 1


def test_switched_off_nothing_leaves_the_box(clinic_factory, fhir_server):
    clinic = clinic_factory(report_fhir_url=fhir_server.url)  # report_fhir_enabled defaults to false
    uid = clinic.screen(seed=15)
    clinic.confirm(uid)
    report_worker(clinic).run(drain=True)
    assert fhir_state(clinic, uid).state == "disabled"
    assert fhir_server.store.requests == [] and actions(clinic, uid) == []


def test_a_report_waits_for_the_radiologist_then_goes(clinic_factory, fhir_server):
    clinic = clinic_factory(report_fhir_enabled="true", report_fhir_url=fhir_server.url)
    uid = clinic.screen(seed=16)
    worker = report_worker(clinic)
    worker.run(drain=True)
    assert fhir_state(clinic, uid).state == "awaiting_confirmation" and fhir_server.store.requests == []
    box = clinic.box
    assert sweep_confirmed(box.db, box.queue, box.settings, box.keystore.box_id) == []  # nothing confirmed yet
    clinic.confirm(uid, birads=3, density="B")
    assert sweep_confirmed(box.db, box.queue, box.settings, box.keystore.box_id) == [uid]
    assert fhir_state(clinic, uid).state == "queued"
    worker.run(drain=True)
    assert fhir_state(clinic, uid).state == "delivered" and fhir_server.store.count("DiagnosticReport") == 1
    report = next(e["resource"] for e in fhir_server.store.requests[0]["bundle"]["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    assert report["status"] == "final"


@pytest.mark.parametrize("value", ["htp://fhir.example", "fhir.example.gov.tr/fhir", "https://", "https://h/fhir?x=1", "https://h:99999/x"])
def test_a_malformed_endpoint_url_is_refused_at_start_naming_the_setting(tmp_path, value, capsys):
    with pytest.raises(SettingsError, match=r"report_fhir_url.*MAMMO_REPORT_FHIR_URL"):
        box_settings(tmp_path, report_fhir_url=value)
    with pytest.raises(SettingsError, match=r"sms_gateway_url"):
        box_settings(tmp_path, sms_gateway_url=value)


def test_mammo_up_refuses_a_malformed_url_with_the_settings_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAMMO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAMMO_REPORT_FHIR_URL", "ftp://fhir.example")
    assert main(["up", "--check"]) == 2
    assert "report_fhir_url" in capsys.readouterr().err


def test_reporting_switched_on_without_an_endpoint_or_with_enabiz_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="report_fhir_url is empty"):
        check_settings(box_settings(tmp_path, report_fhir_enabled="true"))
    with pytest.raises(SettingsError, match="report_adapter = enabiz"):
        check_settings(box_settings(tmp_path, report_fhir_enabled="true", report_fhir_url="https://fhir.example/fhir", report_adapter="enabiz"))
    with pytest.raises(SettingsError, match="sms_recipients is empty"):
        check_settings(box_settings(tmp_path, sms_enabled="true", sms_gateway_url="https://sms.example/send"))


def test_a_radiology_report_typed_into_the_kiosk_also_releases_the_report(clinic_factory, fhir_server):
    import time

    from edge_agent.reporting.facts import table_exists

    clinic = clinic_factory(report_fhir_enabled="true", report_fhir_url=fhir_server.url)
    box = clinic.box
    if not table_exists(box.db, "kiosk_radiology_reports"):
        pytest.skip("this tree's kiosk has no kiosk_radiology_reports table yet (issue 15)")
    uid = clinic.screen(seed=17)
    worker = report_worker(clinic)
    worker.run(drain=True)
    clinic.confirm(uid, birads=3, density="B", source="legacy", username="dr.family")  # the family doctor's pick releases nothing
    assert sweep_confirmed(box.db, box.queue, box.settings, box.keystore.box_id) == []
    box.db.execute("INSERT INTO kiosk_radiology_reports (study_uid, birads, density, recommendation, source, entered_by, created_at)"
                   " VALUES (?, 2, 'B', 'routine', 'radiology_report', 'dr.family', ?)", [uid, time.time()])
    assert sweep_confirmed(box.db, box.queue, box.settings, box.keystore.box_id) == [uid]
    worker.run(drain=True)
    assert fhir_state(clinic, uid).state == "delivered"
    sent = fhir_server.store.requests[0]["bundle"]
    codes = {e["resource"]["valueCodeableConcept"]["coding"][0]["code"] for e in sent["entry"]
             if e["resource"]["resourceType"] == "Observation" and "device" not in e["resource"]}
    assert codes == {"birads-2", "density-B"}
