"""Reading the box's state for the training policy (the I/O side of ``policy.decide``).

Each reading returns None where the platform does not report it (no thermal
zone in a container, no power supply on a desktop), and the policy then
ignores that condition rather than guessing.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import zoneinfo
from pathlib import Path

import sqlite_utils

from edge_agent.settings import Settings

INFER_QUEUE = "infer"


def queue_depth(db: sqlite_utils.Database, queue: str = INFER_QUEUE) -> int:
    """Open (ready or leased) jobs of ``queue``: uses the queue's partial index on open jobs."""
    return int(db.execute("SELECT count(*) FROM jobs WHERE queue = ? AND closed_at IS NULL", [queue]).fetchone()[0])


def load_per_core() -> float | None:
    try:
        return os.getloadavg()[0] / max(1, os.cpu_count() or 1)
    except OSError:
        return None


def temperature_c(root: Path = Path("/sys/class/thermal")) -> float | None:
    """The hottest thermal zone in degrees C, or None where there is none."""
    temps = []
    for zone in root.glob("thermal_zone*/temp"):
        try:
            temps.append(int(zone.read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(temps) if temps else None


def on_mains(root: Path = Path("/sys/class/power_supply")) -> bool | None:
    """True/False where a mains supply (or a battery) reports; None where the platform reports no power supply."""
    mains, battery = [], []
    for supply in root.glob("*"):
        try:
            kind = (supply / "type").read_text().strip()
            if kind == "Mains":
                mains.append((supply / "online").read_text().strip() == "1")
            elif kind == "Battery":
                battery.append((supply / "status").read_text().strip() != "Discharging")
        except OSError:
            continue
    if mains:
        return any(mains)
    if battery:
        return all(battery)
    return None


def local_time(settings: Settings, now: float | None = None) -> dt.time:
    """The clinic's local time of day (the settings' time zone where there is one, else the box's)."""
    ts = time.time() if now is None else now
    zone = str(getattr(settings, "timezone", "") or "")
    try:
        when = dt.datetime.fromtimestamp(ts, zoneinfo.ZoneInfo(zone)) if zone else dt.datetime.fromtimestamp(ts)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        when = dt.datetime.fromtimestamp(ts)
    return when.time().replace(tzinfo=None)
