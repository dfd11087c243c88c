"""Serving the kiosk: uvicorn in a thread, for ``mammo up`` (``start_services``), the browser tests and the benchmark."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn

from edge_agent.settings import Settings
from kiosk_ui.app import create_app
from kiosk_ui.services import KioskServices

log = logging.getLogger(__name__)
FIRST_ADMIN = "admin"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def serve(settings: Settings, services: KioskServices, *, host: str | None = None, port: int | None = None,
          log_level: str = "warning") -> RunningServer:
    """Start the kiosk in a daemon thread and wait until it accepts connections."""
    host = host or settings.kiosk_host
    port = settings.kiosk_port if port is None else port
    tls = {}
    if settings.kiosk_tls_certfile and settings.kiosk_tls_keyfile:
        tls = {"ssl_certfile": str(settings.kiosk_tls_certfile), "ssl_keyfile": str(settings.kiosk_tls_keyfile)}
    config = uvicorn.Config(create_app(settings, services), host=host, port=port, log_level=log_level, access_log=False,
                            lifespan="off", server_header=False, ws="none", **tls)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="kiosk-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise OSError(f"The kiosk could not listen on {host}:{port} (port in use?). Set kiosk_port to a free port.")
        time.sleep(0.02)
    scheme = "https" if tls else "http"
    return RunningServer(server, thread, f"{scheme}://{host}:{server.servers[0].sockets[0].getsockname()[1]}")


def ensure_first_admin(services: KioskServices, settings: Settings) -> str | None:
    """On a box with no account, create 'admin' with a random password in secrets/kiosk-admin-password (0600)."""
    if services.user_count():
        return None
    path = settings.secrets_dir / "kiosk-admin-password"
    password = secrets.token_urlsafe(12)
    services.add_user(FIRST_ADMIN, password, "admin", "Yönetici")
    if path.exists():
        path.unlink()
    _write_private(path, password)
    log.warning("Created the first kiosk account '%s'; its password is in %s. Change it with `mammo user passwd %s`.",
                FIRST_ADMIN, path, FIRST_ADMIN)
    return str(path)


def _write_private(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")


def start_services(box, stop: threading.Event) -> list[threading.Thread]:
    """Daemon hook: serve the kiosk on kiosk_host:kiosk_port until ``stop`` is set."""
    services = KioskServices.from_box(box)
    first = ensure_first_admin(services, box.settings)
    running = serve(box.settings, services)
    log.info("kiosk listening on %s", running.url)
    print(f"Kiosk: {running.url}/", flush=True)
    if first:
        print(f"First kiosk account: user '{FIRST_ADMIN}', password in {first} (change it with `mammo user passwd {FIRST_ADMIN}`).", flush=True)
    probe = threading.Thread(target=services.probe.run, args=(stop,), name="kiosk-online-probe", daemon=True)
    probe.start()

    def watch() -> None:
        stop.wait()
        running.stop()
        services.close()

    watcher = threading.Thread(target=watch, name="kiosk-stopper", daemon=True)
    watcher.start()
    return [watcher, probe]
