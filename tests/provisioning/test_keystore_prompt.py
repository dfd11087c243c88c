"""A clinic box asks its technician for the passphrase at the console: `mammo up` on a real terminal (a pty)."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

from provisioning.keystore import FileKeystore

REPO = Path(__file__).resolve().parents[2]


def _up_at_a_terminal(home: Path, answers: list[str]) -> tuple[int, str]:
    """Runs `mammo up --check` with a pty as its controlling terminal, answering each passphrase prompt in turn."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_")}
    env.update({"MAMMO_HOME": str(home), "MAMMO_KEYSTORE_DEMO_MODE": "false", "MAMMO_KEYSTORE_TPM": "off"})
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and /dev/tty are the pty
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "edge_agent.cli", "up", "--check"], env)
    out, pending, deadline = b"", list(answers), time.monotonic() + 300  # generous: a loaded CI machine imports the box slowly
    answered_at = 0  # answer only a prompt printed after the last answer: getpass flushes input typed before its prompt
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
        fresh = out[answered_at:].rstrip()
        last = fresh.rsplit(b"\n", 1)[-1]
        if pending and last.endswith(b":") and (b"passphrase" in last or b"Again" in last):
            os.write(fd, pending.pop(0).encode() + b"\n")
            answered_at = len(out)
    os.close(fd)
    if time.monotonic() >= deadline:  # never hang the suite on a child still waiting at its terminal
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_mammo_up_asks_for_the_passphrase_twice_on_first_start_then_once(tmp_path: Path):
    home = tmp_path / "clinic"
    code, out = _up_at_a_terminal(home, ["typed at the console", "typed at the console"])
    assert code == 0, out
    assert "New keystore passphrase" in out and "Again" in out and "is up" in out
    assert not (home / "secrets").exists()  # nothing of it written to the disk
    box_id = FileKeystore.open(home / "keystore.json", "typed at the console").box_id

    code, out = _up_at_a_terminal(home, ["typed at the konsole"])
    assert code == 1 and "wrong passphrase" in out and "Traceback" not in out
    code, out = _up_at_a_terminal(home, ["typed at the console"])
    assert code == 0 and box_id in out and "New keystore passphrase" not in out
