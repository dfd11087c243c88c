"""Times and quantities as the clinic reads them: in the clinic's zone (``settings.timezone``), Turkish number format.

The box's clock is often on UTC, three hours behind Türkiye; a doctor reading
"10:12" for a study that arrived at 13:12 would doubt every other time on
the screen. Every time the kiosk, the technician's console and the
``mammo`` commands show or print goes through here (JSON keeps epoch
seconds or ISO times with their offset).
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from zoneinfo import ZoneInfo


@cache
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local(ts: float, tz: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, zone(tz))


def fmt_time(ts: float | None, tz: str) -> str:
    """'30.11.2026 13:12' in the clinic's zone; '—' for none."""
    return "—" if not ts else local(ts, tz).strftime("%d.%m.%Y %H:%M")


def fmt_day(ts: float | None, tz: str) -> str:
    """'30.11.2026' in the clinic's zone; '—' for none."""
    return "—" if not ts else local(ts, tz).strftime("%d.%m.%Y")


def day_start(ts: float, tz: str) -> float:
    """The epoch second of the clinic's midnight that began the day holding ``ts`` ("today" on the worklist)."""
    d = local(ts, tz).date()
    return midnight(d, tz)


def midnight(day: dt.date, tz: str) -> float:
    """The epoch second at which ``day`` begins in the clinic's zone."""
    return dt.datetime.combine(day, dt.time(), zone(tz)).timestamp()


def parse_day(text: str) -> dt.date | None:
    """An ISO date from a form field (``<input type=date>``), or None."""
    try:
        return dt.date.fromisoformat(text.strip()) if len(text.strip()) == 10 else None
    except ValueError:
        return None


def fmt_bytes(n: int, lang: str = "tr") -> str:
    """Free disk as the reader writes it: '82,8 GB' / '512 MB' in Turkish, '82.8 GB' in English."""
    text = f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"
    return text.replace(".", ",") if lang == "tr" else text
