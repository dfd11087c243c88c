"""Where referred studies go: the ``pacs_destinations`` setting, parsed.

Written as a comma-separated list of ``AE_TITLE@host:port/mode``, where mode is

- ``identified``: the woman's own care team (the district hospital's PACS):
  images go out with her name, ID and real dates, restored from the box's
  sealed re-identification map;
- ``deidentified``: research or teleradiology: every object is de-identified
  again with a key of that destination's own (see ``keys``), never the box's,
  so the destination can link a woman's studies but cannot be joined to the
  box or to another destination.

``/identified`` is the default when the mode is left out. Host names are
allowed (a hospital PACS is often known by name) but only looked up when an
export connects. Pure functions: the settings check and the CLI call them.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.errors import SettingsError

IDENTIFIED = "identified"
DEIDENTIFIED = "deidentified"
MODES = (IDENTIFIED, DEIDENTIFIED)
SYNTAX = ("Write a comma-separated list of AE_TITLE@host:port/mode with mode identified or deidentified, "
          "e.g. HOSP_PACS@10.0.5.40:104/identified,RESEARCH@10.0.9.2:11112/deidentified.")


@dataclass(frozen=True)
class Destination:
    """One PACS the box may send to; ``name`` (AE@host:port) is how the CLI, the console and the state rows call it."""

    ae_title: str
    host: str
    port: int
    mode: str = IDENTIFIED

    @property
    def name(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def identified(self) -> bool:
        return self.mode == IDENTIFIED

    def __str__(self) -> str:
        return f"{self.name}/{self.mode}"


def parse_destination(entry: str) -> Destination:
    """One entry; raises SettingsError naming the entry and the syntax."""
    entry = entry.strip()
    where, slash, mode = entry.partition("/")
    mode = mode.strip().lower() if slash else IDENTIFIED
    if mode not in MODES:
        raise SettingsError(f"pacs_destinations entry {entry!r}: mode {mode!r} is neither identified nor deidentified. {SYNTAX}")
    title, at, hostport = where.rpartition("@")
    if not at:
        raise SettingsError(f"pacs_destinations entry {entry!r} has no '@host:port'. {SYNTAX}")
    title = title.strip()
    if not (0 < len(title) <= 16) or not title.isascii() or "\\" in title or not title.isprintable():
        raise SettingsError(f"pacs_destinations entry {entry!r}: the AE title must be 1-16 printable ASCII characters without backslash. {SYNTAX}")
    host, colon, port_text = hostport.strip().rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise SettingsError(f"pacs_destinations entry {entry!r}: {hostport!r} is not host:port with a port 1-65535. {SYNTAX}")
    return Destination(title, host, int(port_text), mode)


def parse_destinations(text: str) -> tuple[Destination, ...]:
    """The whole setting; two entries naming the same AE@host:port are refused (which mode would win?)."""
    out: list[Destination] = []
    for raw in text.split(","):
        if not raw.strip():
            continue
        d = parse_destination(raw)
        if any(o.name == d.name for o in out):
            raise SettingsError(f"pacs_destinations names {d.name} twice. Fix: keep one entry per PACS. {SYNTAX}")
        out.append(d)
    return tuple(out)


def find(destinations: tuple[Destination, ...], name: str) -> Destination | None:
    """The configured destination called ``name`` (AE@host:port, with or without its /mode)."""
    key = name.strip().partition("/")[0]
    return next((d for d in destinations if d.name == key), None)
