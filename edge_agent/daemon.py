"""``mammo up``: the box daemon that runs every service until told to stop.

Each service is a function ``start(box, stop) -> list[threading.Thread]``
named in ``SERVICES``; a package adds its own once it exists.  The daemon
owns the loop, the signals and the shutdown order; services own nothing
global.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import logging.handlers
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.box import Box

log = logging.getLogger(__name__)

# "module:function" of each service starter, in start order.
SERVICES: tuple[str, ...] = (
    "edge_agent.ingest.service:start_services",
    "edge_agent.inference.service:start_services",
    "kiosk_ui.server:start_services",
    "edge_agent.learning.service:start_services",
    "edge_agent.reporting.service:start_services",
    "edge_agent.pacs.service:start_services",
    # Above the box (sync imports edge_agent, never the reverse): reached only through this table.
    "sync.service:start_services",
)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    detail: str


def available_services() -> list[str]:
    out = []
    for spec in SERVICES:
        module = spec.split(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out.append(spec)
    return out


def start_all(box: Box, stop: threading.Event) -> tuple[list[threading.Thread], list[ServiceStatus]]:
    threads: list[threading.Thread] = []
    statuses: list[ServiceStatus] = []
    for spec in available_services():
        module, func = spec.split(":")
        try:
            started = getattr(importlib.import_module(module), func)(box, stop)
        except Exception as exc:  # one failing service must not take the box down
            log.exception("service %s failed to start", spec)
            statuses.append(ServiceStatus(module, False, f"failed to start: {exc}"))
            continue
        threads.extend(started)
        statuses.append(ServiceStatus(module, True, f"{len(started)} thread(s)"))
    return threads, statuses


LOG_FILE = "mammo.log"
LOG_BYTES = 5 * 1024 * 1024
LOG_BACKUPS = 4


def log_to_file(log_dir: Path) -> logging.Handler:
    """Also write the daemon's log to ``log_dir/mammo.log`` (0600, rotated at 5 MB, 4 kept).

    The technician's console and a support visit read it from there; stderr
    alone is lost when the box runs as a service without a journal.  Rotation
    bounds it, so a noisy fault cannot fill the disk that holds the images.
    """
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = log_dir / LOG_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def run(box: Box, stop: threading.Event | None = None, *, install_signals: bool = True) -> list[ServiceStatus]:
    """Start every service, wait for SIGTERM/SIGINT (or ``stop``), then join them."""
    stop = stop or threading.Event()
    if install_signals:
        def _on_signal(signum: int, _frame: Any) -> None:
            log.info("signal %s: stopping services", signum)
            stop.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    threads, statuses = start_all(box, stop)
    stop.wait()
    for t in threads:
        t.join(timeout=30)
    return statuses
