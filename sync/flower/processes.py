"""Flower's deployment engine as child processes: the SuperLink, SuperNodes, and the ``flwr`` CLI calls around them.

Flower 1.42 serves the Fleet, Control and Runtime APIs of a SuperLink over
HTTPS on one port; each SuperNode opens a local Runtime port of its own, so
several boxes on one machine need distinct ``--port``s (STACK-NOTES, Flower).
Everything here starts Flower's own executables from the virtual environment
this Python runs in, with ``FLWR_HOME`` pointing into the owner's home, so a
coordinator and three demo boxes on one machine never share Flower state.

Trust, as the federation sets it up (``provisioning``):

* TLS: the SuperLink presents a server certificate issued by the federation
  CA (``Authority.server_certificate``); a SuperNode verifies it with the CA
  from its startup kit (``--root-certificates``).
* Node authentication: the SuperLink runs with ``--enable-supernode-auth`` and
  accepts only public keys registered through its Control API
  (``flwr supernode register``); a SuperNode signs its requests with its
  private key (``--auth-supernode-private-key``, OpenSSH format).  The box's
  key is its P-256 enrolment key, the one its certificate certifies, so
  admitting a certificate admits exactly that box; unregistering the node
  (revocation) makes the SuperLink refuse it at its next request, and the
  SuperNode exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.errors import SyncError

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent
CONNECTION = "mammo"
CLI_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port free on loopback now (the caller binds it soon after; a race only costs a retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, host: str = "127.0.0.1") -> None:
    """Block until something listens on ``host:port``; SyncError when ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SyncError(f"{proc.args[0] if isinstance(proc.args, list) else proc.args!r} exited with {proc.returncode} before listening on {port}. "
                            "Fix: read its log in the sync folder.")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise SyncError(f"Nothing listens on {host}:{port} after {timeout:.0f} s. Fix: read the Flower log in the sync folder.")


def ssh_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The OpenSSH form Flower's SuperNode reads (``--auth-supernode-private-key``)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())


def ssh_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    """The OpenSSH form ``flwr supernode register`` reads."""
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def write_private(path: Path, data: bytes) -> Path:
    """Write a file only its owner can read (0600, created so before any byte lands), replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def write_cli_config(flwr_home: Path, address: str, root_certificates: Path) -> None:
    """``$FLWR_HOME/config.toml`` naming the one SuperLink connection the ``flwr`` CLI uses (TLS with the federation CA)."""
    flwr_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\nroot-certificates = "{root_certificates}"\n',
        encoding="utf-8")


def _env(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def flwr_cli(flwr_home: Path, *args: str, timeout: float = CLI_TIMEOUT_S) -> dict[str, Any]:
    """Run ``flwr ARGS --format json`` against the configured SuperLink; its JSON reply, or SyncError with its message."""
    cmd = [str(BIN / "flwr"), *args, "--format", "json"]
    try:
        done = subprocess.run(cmd, env=_env(flwr_home), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SyncError(f"`flwr {' '.join(args)}` did not answer in {timeout:.0f} s. Fix: check that the SuperLink runs (mammo coordinator status).") from None
    out = done.stdout.strip()
    start = out.find("{")
    try:
        reply: dict[str, Any] = json.loads(out[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        reply = {}
    if done.returncode != 0 or not reply.get("success", False):
        detail = reply.get("error-message") or (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SyncError(f"`flwr {' '.join(args)}` failed: {detail}")
    return reply


def register_node(flwr_home: Path, public_key: ec.EllipticCurvePublicKey, name: str) -> int:
    """Admit one SuperNode key at the SuperLink; returns the node id Flower gives it (what a ServerApp sees)."""
    path = write_private(flwr_home / "keys" / f"{name}.pub", ssh_public_key(public_key))
    return int(flwr_cli(flwr_home, "supernode", "register", str(path), "--name", name)["node-id"])


def unregister_node(flwr_home: Path, node_id: int) -> None:
    """Withdraw a SuperNode key: the SuperLink refuses that node from its next request on."""
    flwr_cli(flwr_home, "supernode", "unregister", str(node_id))


def list_nodes(flwr_home: Path) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = flwr_cli(flwr_home, "supernode", "ls")["nodes"]
    return nodes


@dataclass
class Child:
    """A Flower process this program started (its own session, so it and its children stop together)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout``; closes the log."""
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=timeout)
        self._log.close()

    def kill(self) -> None:
        """SIGKILL the whole group at once: what a power cut does to the box's sync (tests, and a hung child)."""
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


def spawn(name: str, cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path | None = None) -> Child:
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = log_path.open("ab")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    log.info("started %s (pid %d): %s", name, proc.pid, " ".join(cmd[:2]))
    return Child(name, proc, log_path, out)


@dataclass(frozen=True)
class LinkTls:
    """The SuperLink's TLS files: its certificate and key (from the federation CA) and the CA itself."""

    certfile: Path
    keyfile: Path
    cafile: Path


def start_superlink(folder: Path, port: int, tls: LinkTls, env: dict[str, str] | None = None) -> Child:
    """``flower-superlink`` with TLS and SuperNode authentication, its state in ``folder/superlink.db`` (node ids survive a restart)."""
    cmd = [str(BIN / "flower-superlink"), "--ssl-certfile", str(tls.certfile), "--ssl-keyfile", str(tls.keyfile), "--ssl-ca-certfile", str(tls.cafile),
           "--enable-supernode-auth", "--disable-runtime-dependency-installation", "--database", str(folder / "superlink.db"),
           "--host", "127.0.0.1", "--port", str(port)]
    child = spawn("superlink", cmd, folder / "logs" / "superlink.log", _env(folder / "flwr", env), cwd=folder)
    wait_port(port, 60, child.proc)
    return child


def start_supernode(folder: Path, superlink: str, root_certificates: Path, auth_key: Path, port: int, node_config: dict[str, str],
                    env: dict[str, str] | None = None) -> Child:
    """``flower-supernode`` for one box: TLS to ``superlink`` checked against the federation CA, signed with the box's key."""
    config = " ".join(f"{k}={json.dumps(v)}" for k, v in node_config.items())
    cmd = [str(BIN / "flower-supernode"), "--root-certificates", str(root_certificates), "--superlink", superlink,
           "--auth-supernode-private-key", str(auth_key), "--host", "127.0.0.1", "--port", str(port), "--node-config", config]
    return spawn("supernode", cmd, folder / "logs" / "supernode.log", _env(folder / "flwr", env), cwd=folder)


def submit_run(flwr_home: Path, app_dir: Path, run_config: dict[str, str]) -> int:
    """``flwr run APP_DIR``: the SuperLink starts the ServerApp of ``app_dir`` in its own process; returns the run id."""
    config = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
    reply = flwr_cli(flwr_home, "run", str(app_dir), CONNECTION, "--run-config", config, timeout=120)
    return int(reply["run-id"])


def stop_run(flwr_home: Path, run_id: int) -> None:
    with contextlib.suppress(SyncError):
        flwr_cli(flwr_home, "stop", str(run_id))
