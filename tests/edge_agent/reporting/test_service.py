"""The daemon hook as `mammo up` runs it: report and notify workers, the sweep, and /metrics, until stopped."""

from __future__ import annotations

import socket
import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from edge_agent import daemon
from edge_agent.reporting import state
from edge_agent.reporting.delivery import mask_phone
from edge_agent.reporting.service import start_services

DOCTOR = "+905551112233"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond, tries: int = 300) -> bool:
    for _ in range(tries):
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_mammo_up_delivers_the_report_once_sends_one_sms_and_serves_metrics(clinic_factory, fhir_server, sms_server):
    assert "edge_agent.reporting.service:start_services" in daemon.available_services()
    port = free_port()
    clinic = clinic_factory(report_fhir_enabled="true", report_fhir_url=fhir_server.url, sms_enabled="true", sms_gateway_url=sms_server.url,
                            sms_recipients=DOCTOR, metrics_port=str(port))
    uid = clinic.screen(seed=41)
    clinic.set_result(uid, "priority_radiologist_review")
    clinic.confirm(uid, birads=4, density="C")
    stop = threading.Event()
    threads = start_services(clinic.box, stop)
    try:
        db = clinic.box.db
        assert wait_for(lambda: (state.get(db, uid, "fhir") or state.Delivery(*[None] * 9)).state == "delivered")
        assert wait_for(lambda: (state.get(db, uid, "sms", mask_phone(DOCTOR)) or state.Delivery(*[None] * 9)).state == "delivered")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        delivered = {(s.labels["channel"], s.labels["state"]): s.value for s in fams["mammo_reports"].samples}
        assert delivered[("fhir", "delivered")] == 1 and delivered[("sms", "delivered")] == 1
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not [t.name for t in threads if t.is_alive()]
    assert fhir_server.store.count("DiagnosticReport") == 1 and len(sms_server.gw.messages) == 1
    # the endpoint is gone with the service
    try:
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
        served_after_stop = True
    except httpx.HTTPError:
        served_after_stop = False
    assert not served_after_stop
