"""The export as the daemon, the CLI and the console run it: real daemon hook, real `mammo` process, the console headless."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge_agent.console.app import Console
from edge_agent.pacs import service
from tests.edge_agent.test_console import show

REPO = Path(__file__).resolve().parents[3]


def test_daemon_hook_sends_a_queued_export(clinic_factory, pacs):
    hospital = pacs()
    dest = f"HOSP_PACS@127.0.0.1:{hospital.port}"
    clinic = clinic_factory(pacs_destinations=dest)
    study_uid = clinic.push_study(11)[0].study_uid
    clinic.triage()
    stop = threading.Event()
    threads = service.start_services(clinic.box, stop)
    try:
        service.refer_to_pacs(clinic.box.queue, clinic.box.settings, study_uid, requested_by="dr")
        deadline = time.monotonic() + 120
        while service.export_states(clinic.box.db, study_uid)[0].state != "sent" and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert service.export_states(clinic.box.db, study_uid)[0].state == "sent"
    assert len(hospital.received) == 9 and not any(t.is_alive() for t in threads)


def test_cli_export_study_wait_json(clinic_factory, pacs):
    hospital = pacs()
    dest = f"HOSP_PACS@127.0.0.1:{hospital.port}"
    clinic = clinic_factory(pacs_destinations=dest)
    study_uid = clinic.push_study(12)[0].study_uid
    clinic.triage()
    env = {**os.environ, "MAMMO_HOME": str(clinic.box.settings.home), "MAMMO_KEYSTORE_PASSPHRASE": "test-passphrase",
           "MAMMO_PACS_DESTINATIONS": dest}

    def mammo(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)

    r = mammo("export", "study", study_uid, "--to", dest, "--wait", "--json")
    assert r.returncode == 0, r.stderr
    export = json.loads(r.stdout.strip().splitlines()[-1])["export"]
    assert export["state"] == "sent" and export["objects_sent"] == 9 and export["destination"] == dest
    r = mammo("export", "list", "--json")
    assert [e["state"] for e in json.loads(r.stdout.strip().splitlines()[-1])["exports"]] == ["sent"]
    r = mammo("export", "study", study_uid, "--to", "NOPE@127.0.0.1:1", "--json")
    assert r.returncode == 1 and "pacs_destinations" in r.stderr
    env["MAMMO_PACS_DESTINATIONS"] = "HOSP_PACS@nowhere"  # a bad setting stops at start, naming itself
    r = mammo("export", "list")
    assert r.returncode == 2 and "pacs_destinations" in r.stderr and "MAMMO_PACS_DESTINATIONS" in r.stderr


async def test_console_shows_a_stuck_export_with_its_reason(clinic_factory, pacs):
    hospital = pacs()
    dest = f"HOSP_PACS@127.0.0.1:{hospital.port}"
    clinic = clinic_factory(pacs_destinations=dest)
    study_uid = clinic.push_study(13)[0].study_uid
    clinic.triage()
    hospital.stop()  # the hospital's PACS is down
    service.export_study(clinic.box.queue, clinic.box.settings, study_uid, dest, requested_by="cli")
    worker, _ = service.make_worker(clinic.box, threading.Event())
    worker.run_once()
    worker.queue.db.conn.close()
    app = Console(clinic.box, "en")
    async with app.run_test(size=(80, 24)) as pilot:
        text = await show(app, pilot, "2")
    assert "PACS exports" in text and "retrying 1" in text
    assert "HOSP_PACS@127.0.0.1" in text and "did not answer" in text
