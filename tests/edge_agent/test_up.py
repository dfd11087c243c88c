"""The README's first command, minus the install: `mammo kiosk demo` then `mammo up` as a real process.

Everything starts together (receiver, drop folder, inference, kiosk), the demo
studies are triaged by the shipped model without anyone touching the box, the
kiosk answers at the printed address, and SIGTERM stops it all cleanly.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edge_agent.store import open_database
from kiosk_ui.server import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_box_comes_up_triages_its_studies_serves_the_kiosk_and_stops_on_sigterm(tmp_path):
    env = {**os.environ, "MAMMO_HOME": str(tmp_path), "MAMMO_KIOSK_PORT": str(free_port()),
           "MAMMO_DICOM_HOST": "127.0.0.1", "MAMMO_DICOM_PORT": str(free_port())}
    cmd = [sys.executable, "-m", "edge_agent.cli"]
    demo = subprocess.run([*cmd, "kiosk", "demo", "--studies", "2"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr
    proc = subprocess.Popen([*cmd, "up"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            m = re.match(r"Kiosk: (http://\S+)", line)
            url = m.group(1) if m else None
        assert url, "mammo up never printed the kiosk address"
        assert httpx.get(url + "login", timeout=10).status_code == 200
        db = open_database(tmp_path / "box.sqlite3", migrate=False)
        while time.monotonic() < deadline:
            done = db.execute("SELECT count(*) FROM infer_results WHERE status = 'done'").fetchone()[0]
            if done == 2:
                break
            time.sleep(0.2)
        assert done == 2, "the demo studies were not triaged"
        assert (tmp_path / "secrets" / "kiosk-admin-password").exists()
        db.conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        log_file = tmp_path / "logs" / "mammo.log"  # what the technician's console follows
        assert log_file.stat().st_mode & 0o777 == 0o600
        assert "stopping services" in log_file.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
