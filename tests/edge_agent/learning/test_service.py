"""The daemon's schedule: stored in the box home so a reboot resumes it; its job asks the policy and starts a real round."""

from __future__ import annotations

import threading
import time

from edge_agent.box import open_box
from edge_agent.learning import ledger, service
from edge_agent.store import open_database

DEADLINE_S = 240


def test_the_schedule_survives_a_restart(clinic):
    settings = clinic.settings(MAMMO_TRAIN_CHECK_INTERVAL_S="3600")
    first = service.make_scheduler(settings)
    first.start(paused=True)
    job = service.ensure_job(first, settings)
    due = job.next_run_time
    first.shutdown(wait=False)
    assert service.schedule_path(settings).exists()

    again = service.make_scheduler(settings)  # the box rebooted
    again.start(paused=True)
    try:
        [stored] = again.get_jobs()
        assert stored.id == service.JOB_ID and stored.func_ref == service.JOB_FUNC and stored.next_run_time == due
        assert service.ensure_job(again, settings).next_run_time == due  # not pushed back by the restart
        assert len(again.get_jobs()) == 1
        changed = service.ensure_job(again, clinic.settings(MAMMO_TRAIN_CHECK_INTERVAL_S="600"))
        assert changed.trigger.interval.total_seconds() == 600 and len(again.get_jobs()) == 1
    finally:
        again.shutdown(wait=False)


def test_the_job_records_why_no_round_starts(clinic):
    clinic.write_toml(min_examples=100)
    assert service.scheduled_check(str(clinic.home)) is None
    db = open_database(clinic.home / "box.sqlite3")
    try:
        d = ledger.last_decision(db)
        assert d["train"] is False and any("too few confirmed studies: " in r for r in d["reasons"])
        assert ledger.rounds(db) == []
    finally:
        db.conn.close()


def test_the_running_daemon_service_trains_a_round_and_places_its_update(clinic, monkeypatch):
    clinic.write_toml(check_interval_s=1, steps=6)
    monkeypatch.setenv("PYTHONPATH", clinic.process_env()["PYTHONPATH"])
    box = open_box(clinic.settings(MAMMO_TRAIN_CHECK_INTERVAL_S="1"), interactive=False)
    stop = threading.Event()
    try:
        threads = service.start_services(box, stop)
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end and not [r for r in ledger.rounds(box.db) if r.state == "done"]:
            time.sleep(0.2)
        [r] = ledger.rounds(box.db)
        assert r.state == "done" and r.update_id == r.round_id
        assert (clinic.home / "test-outbox" / f"{r.update_id}.npz").exists()
    finally:
        stop.set()
        for t in threads if "threads" in locals() else []:
            t.join(timeout=60)
        box.close()
