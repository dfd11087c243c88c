"""Several real processes share one box database, as on a clinic box.

`mammo up` runs; CLI commands open and close their own connections beside it;
a modality stores images over DICOM; the daemon is SIGKILLed and restarted.
Every image the box acknowledged must still be there, and a password changed
by the CLI must end the daemon's kiosk sessions at once.  Before the header
check went through SQLite, the daemon's own raw open()/close() of the file
dropped its POSIX locks, the first CLI command to exit deleted the daemon's
WAL under it, and acknowledged images were lost.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edge_agent.store import open_database

REPO = Path(__file__).resolve().parents[2]
AE_TITLE = "MAMMO_EDGE"
IMAGES = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "MAMMO_HOME": str(home), "MAMMO_KEYSTORE_PASSPHRASE": "test-passphrase",
            "MAMMO_KIOSK_HOST": "127.0.0.1", "MAMMO_KIOSK_PORT": str(_free_port()),
            "MAMMO_DICOM_HOST": "127.0.0.1", "MAMMO_DICOM_PORT": str(_free_port())}


def _mammo(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], env=env, cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"mammo {' '.join(args)} failed: {done.stderr}"
    return done


def _up(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    with log.open("ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "up"], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.match(r"Kiosk: (http://\S+?)/?$", line.strip())
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"mammo up never printed the kiosk address; its log:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()


def _deleted_db_files(pid: int) -> list[str]:
    """Database files (box.sqlite3, -wal, -shm) the process still holds although they were unlinked."""
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if "box.sqlite3" in target and target.endswith("(deleted)"):
            out.append(target)
    return out


def _store_images(port: int, n: int) -> int:
    """C-STORE ``n`` views (never four of one woman, so no study completes); returns how many were acknowledged."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation

    from edge_agent.ingest import mg

    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established, "the box's DICOM receiver refused the association"
    acknowledged = 0
    try:
        for i in range(n):
            views = mg.screening_study(mg.fake_patient(100 + i // 2), seed=i, size=64)
            ds = pydicom.dcmread(io.BytesIO(mg.to_bytes(views[i % 2])))
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) == 0x0000:
                acknowledged += 1
    finally:
        assoc.release()
    return acknowledged


def _sign_in(client: httpx.Client, username: str, password: str) -> httpx.Response:
    page = client.get("/login")
    token = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)
    return client.post("/login", data={"_csrf": token, "username": username, "password": password})


def _signed_in(client: httpx.Client) -> bool:
    return client.get("/worklist").url.path == "/worklist"


@pytest.mark.slow
def test_daemon_cli_and_modality_share_the_database_without_losing_an_acknowledged_image(tmp_path: Path):
    home = tmp_path / "home"
    env = _env(home)
    log = tmp_path / "daemon.log"
    proc, url = _up(env, log)
    try:
        # Other processes open and close the database while the daemon runs.
        _mammo(env, "status", "--json")
        _mammo(env, "queue", "stats", "--json")
        assert _deleted_db_files(proc.pid) == [], "a CLI command deleted the database files the daemon writes to"
        modes = {name: stat.S_IMODE((home / name).stat().st_mode) for name in (".", "drop", "box.sqlite3", "box.sqlite3-wal", "box.sqlite3-shm")}
        assert modes == {".": 0o700, "drop": 0o700, "box.sqlite3": 0o600, "box.sqlite3-wal": 0o600, "box.sqlite3-shm": 0o600}

        old_password = (home / "secrets" / "kiosk-admin-password").read_text().strip()
        kiosk = httpx.Client(base_url=url, timeout=30, follow_redirects=True)
        assert _sign_in(kiosk, "admin", old_password).url.path == "/worklist"

        acknowledged = _store_images(int(env["MAMMO_DICOM_PORT"]), IMAGES)
        assert acknowledged == IMAGES
        _mammo(env, "status")

        # A password changed in another process ends the daemon's sessions at once.
        new_password = "yeni-parola-2026"
        _mammo(env, "user", "passwd", "admin", "--password-stdin", stdin=new_password + "\n")
        assert not _signed_in(kiosk), "the daemon still honours a session the CLI ended"
        fresh = httpx.Client(base_url=url, timeout=30, follow_redirects=True)
        assert _sign_in(fresh, "admin", old_password).url.path == "/login", "the old password still signs in"
        assert _sign_in(fresh, "admin", new_password).url.path == "/worklist"
        kiosk.close()
        fresh.close()
        assert _deleted_db_files(proc.pid) == []

        proc.send_signal(signal.SIGKILL)
        _stop(proc)
        proc, url = _up(env, log)  # recovery from the WAL happens here
        db = open_database(home / "box.sqlite3", migrate=False)
        try:
            stored = db.execute("SELECT count(*) FROM ingest_instances").fetchone()[0]
        finally:
            db.conn.close()
        assert stored == acknowledged, f"{acknowledged - stored} acknowledged image(s) lost after SIGKILL"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        _stop(proc)
