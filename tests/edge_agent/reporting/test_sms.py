"""The family doctor's SMS: one Turkish notice per priority study through the notify queue, no name, no diagnosis."""

from __future__ import annotations

import re

from edge_agent.ingest import mg
from edge_agent.reporting import sms, state
from edge_agent.reporting.delivery import mask_phone

from .conftest import notify_worker, report_worker, run_until

DOCTOR = "+905321234567"
PRIORITY = "priority_radiologist_review"


def sms_clinic(clinic_factory, sms_server, **env):
    return clinic_factory(sms_enabled="true", sms_gateway_url=sms_server.url, sms_recipients=DOCTOR, **env)


def screened_priority(clinic, seed):
    """A real study screened by the model, then marked priority (as a suspicious study would be) before its report job runs."""
    uid = clinic.screen(seed=seed)
    clinic.set_result(uid, PRIORITY)
    report_worker(clinic).run(drain=True)
    return uid


def test_a_priority_study_sends_one_sms_in_turkish_with_no_name_and_no_diagnosis(clinic_factory, sms_server):
    clinic = sms_clinic(clinic_factory, sms_server)
    uid = screened_priority(clinic, seed=21)
    notify_worker(clinic).run(drain=True)
    assert len(sms_server.gw.messages) == 1
    msg = sms_server.gw.messages[0]
    text = msg["text"]
    pseudonym = clinic.box.db.execute("SELECT pseudonym FROM ingest_studies WHERE study_uid = ?", [uid]).fetchone()[0]
    assert msg["to"] == DOCTOR and msg["sender"] == "MAMMOAI"
    assert "öncelikli radyolog incelemesi bekliyor" in text and f"{pseudonym} / {uid[-6:]}" in text
    woman = mg.fake_patient(21)
    for part in [*woman.name.split("^"), woman.patient_id]:
        assert part.lower() not in text.lower()
    for word in ("kanser", "malign", "BI-RADS", "şüpheli", "tümör", "cancer", "skor", "score"):
        assert word.lower() not in text.lower()
    assert not re.search(r"\d[.,]\d", text)  # no score or probability
    assert sms_server.gw.headers[0]["Idempotency-Key"] == msg["reference"]
    st = state.get(clinic.box.db, uid, "sms", mask_phone(DOCTOR))
    assert st.state == "delivered" and DOCTOR not in st.target
    actions = [r[0] for r in clinic.box.db.execute("SELECT action FROM audit_log WHERE actor = 'reporting' AND object = ? ORDER BY seq", [uid])]
    assert actions == ["sms_send", "sms_sent"]
    # the trigger running again (a crash before its ack) queues nothing new; a delivered notice is never resent
    clinic.box.queue.enqueue("notify", {"kind": "sms", "study_uid": uid, "to": DOCTOR}, key="sms:again")
    notify_worker(clinic).run(drain=True)
    assert len(sms_server.gw.messages) == 1


def test_a_study_that_is_not_priority_sends_nothing(clinic_factory, sms_server):
    clinic = sms_clinic(clinic_factory, sms_server)
    uid = clinic.screen(seed=22)
    clinic.set_result(uid, "radiologist_review")
    report_worker(clinic).run(drain=True)
    notify_worker(clinic).run(drain=True)
    assert sms_server.gw.messages == [] and state.get(clinic.box.db, uid, "sms", mask_phone(DOCTOR)) is None


def test_switched_off_a_priority_study_shows_sms_disabled(clinic_factory, sms_server):
    clinic = clinic_factory(sms_gateway_url=sms_server.url, sms_recipients=DOCTOR)
    uid = screened_priority(clinic, seed=23)
    notify_worker(clinic).run(drain=True)
    assert sms_server.gw.messages == [] and [d.state for d in state.of_study(clinic.box.db, uid) if d.channel == "sms"] == ["disabled"]


def test_a_failing_gateway_keeps_the_notice_queued_with_the_reason_then_sends_it_once(clinic_factory, sms_server):
    clinic = sms_clinic(clinic_factory, sms_server)
    uid = screened_priority(clinic, seed=24)
    worker = notify_worker(clinic)
    target = mask_phone(DOCTOR)
    for mode, reason in (("500", "HTTP 500: operator error"), ("429", "rate limiting (HTTP 429, Retry-After 30 s)"), ("garbage", "not JSON")):
        sms_server.gw.mode = mode
        assert run_until(worker, lambda: reason in (state.get(clinic.box.db, uid, "sms", target).detail or ""))  # noqa: B023
        assert state.get(clinic.box.db, uid, "sms", target).state == "retrying"
    sms_server.gw.mode = "ok"
    assert run_until(worker, lambda: state.get(clinic.box.db, uid, "sms", target).state == "delivered")
    assert len(sms_server.gw.messages) == 1


def test_the_rate_limits_hold_notices_back_until_the_window_has_room():
    now = 10_000.0
    assert sms.rate_wait([], now, per_minute=2, per_hour=10) == 0
    assert sms.rate_wait([now - 50], now, per_minute=2, per_hour=10) == 0
    assert sms.rate_wait([now - 50, now - 10], now, per_minute=2, per_hour=10) == 10  # the older one leaves the minute in 10 s
    hour = [now - 3000 + i for i in range(10)]
    assert sms.rate_wait(hour, now, per_minute=100, per_hour=10) == 600  # the oldest leaves the hour in 600 s


def test_the_notifier_waits_once_the_minute_is_full(clinic_factory, sms_server):
    clinic = sms_clinic(clinic_factory, sms_server, sms_per_minute="1")
    uid = screened_priority(clinic, seed=25)
    worker = notify_worker(clinic)
    worker.run(drain=True)
    assert len(sms_server.gw.messages) == 1
    assert worker.handler.wait_s() > 0  # one sent in this minute: the next one waits its turn
    assert state.get(clinic.box.db, uid, "sms", mask_phone(DOCTOR)).state == "delivered"
