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
import signal
import threading
from dataclasses import dataclass
from typing import Any

from edge_agent.box import Box

log = logging.getLogger(__name__)

# "module:function" of each service starter, in start order.
SERVICES: tuple[str, ...] = (
    "edge_agent.ingest.service:start_services",
    "edge_agent.inference.service:start_services",
    "kiosk_ui.server:start_services",
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
