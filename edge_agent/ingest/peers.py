"""Which DICOM peers may open an association with the box, as Orthanc's ``DicomModalities`` does.

Knowing the AE title is not enough to push images into a clinic's box: the
setting ``dicom_peers`` lists the modalities by AE title *and* address, as
``AE_TITLE@address`` separated by commas.  ``address`` is an IP address or a
network (``10.0.5.0/24``); ``AE_TITLE@*`` accepts that title from any address,
``*@address`` any title from that address, and ``*`` anyone (the receiver warns
about it at start).  Connections from this machine are accepted separately
(``dicom_allow_loopback``) so the box's own tools work out of the box.

Pure functions of what the association request carries; the receiver
(``scp``) calls them and does the logging and the refusing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from edge_agent.errors import SettingsError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ANY = "*"
_SYNTAX = "Write a comma-separated list of AE_TITLE@address, AE_TITLE@*, *@address or *, e.g. MAMMO_UNIT@10.0.5.21,PACS@10.0.5.0/24."


@dataclass(frozen=True)
class Peer:
    """One ``dicom_peers`` entry; ``None`` stands for the wildcard."""

    ae_title: str | None
    network: IPNetwork | None

    def matches(self, ae_title: str, address: IPAddress | None) -> bool:
        if self.ae_title is not None and self.ae_title != ae_title.strip():
            return False
        if self.network is None:
            return True
        return address is not None and address.version == self.network.version and address in self.network

    def __str__(self) -> str:
        return f"{self.ae_title or ANY}@{self.network or ANY}"


def parse_peers(text: str) -> tuple[Peer, ...]:
    """Parse ``dicom_peers``; raises SettingsError naming the bad entry and the syntax."""
    peers = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry == ANY:
            peers.append(Peer(None, None))
            continue
        title, at, addr = entry.rpartition("@")
        if not at:
            raise SettingsError(f"dicom_peers entry {entry!r} has no '@address'. {_SYNTAX}")
        peers.append(Peer(_ae_title(title.strip(), entry), _network(addr.strip(), entry)))
    return tuple(peers)


def _ae_title(title: str, entry: str) -> str | None:
    if title == ANY:
        return None
    if not (0 < len(title) <= 16) or not title.isascii() or "\\" in title or not title.isprintable():
        raise SettingsError(f"dicom_peers entry {entry!r}: the AE title must be 1-16 printable ASCII characters without backslash. {_SYNTAX}")
    return title


def _network(addr: str, entry: str) -> IPNetwork | None:
    if addr == ANY:
        return None
    try:
        return ipaddress.ip_network(addr.strip("[]"), strict=False)
    except ValueError:
        raise SettingsError(
            f"dicom_peers entry {entry!r}: {addr!r} is not an IP address or network (host names are not looked up: "
            f"the box may be offline). {_SYNTAX}"
        ) from None


def parse_address(address: str) -> IPAddress | None:
    """The peer's IP as a comparable address (IPv4-mapped IPv6 and zone ids unwrapped); None if unparsable."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_allowed(peers: tuple[Peer, ...], ae_title: str, address: str, *, allow_loopback: bool) -> bool:
    """May a peer calling itself ``ae_title`` from ``address`` associate?"""
    ip = parse_address(address)
    if allow_loopback and ip is not None and ip.is_loopback:
        return True
    return any(p.matches(ae_title, ip) for p in peers)


def open_to_anyone(peers: tuple[Peer, ...]) -> bool:
    """True when an entry accepts any title from any address (``*`` or ``*@*``)."""
    return any(p.ae_title is None and p.network is None for p in peers)
