"""The DICOM receiver's bounds, as pure functions: bytes per dataset, connections per peer.

A modality can send a dataset of any size and open as many connections as
it likes; without bounds one 200 MB C-STORE doubled the daemon's memory and
a dozen idle TCP connections locked every modality out until they timed
out.  The receiver (``scp``) feeds every received PDU to a ``DatasetMeter``
(so a dataset above ``ingest_max_file_bytes`` is aborted while it arrives,
not after) and asks ``admit_connection`` before serving a new connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

P_DATA_TF = 0x04
_PDU_HEADER = 6  # type, reserved, 4-byte length
_PDV_HEADER = 6  # 4-byte item length, context id, message control header


def pdata_dataset_bytes(pdu: bytes) -> tuple[int, bool]:
    """Dataset bytes carried by one P-DATA-TF PDU, and whether a dataset's last fragment is among them.

    PS3.8 9.3.5 and Annex E.2: each PDV item carries a control header whose
    bit 0 marks a command fragment (not counted) and bit 1 the last fragment.
    Any other PDU carries no dataset bytes.
    """
    if len(pdu) < _PDU_HEADER or pdu[0] != P_DATA_TF:
        return 0, False
    end = min(len(pdu), _PDU_HEADER + int.from_bytes(pdu[2:6], "big"))
    total, last, i = 0, False, _PDU_HEADER
    while i + _PDV_HEADER <= end:
        item_length = int.from_bytes(pdu[i:i + 4], "big")
        if item_length < 2:  # malformed; pynetdicom rejects the PDU itself
            break
        control = pdu[i + 5]
        if not control & 0x01:
            total += min(item_length - 2, end - i - _PDV_HEADER)
            last = last or bool(control & 0x02)
        i += 4 + item_length
    return total, last


@dataclass
class DatasetMeter:
    """Counts the bytes of the dataset an association is sending; says when it passed ``limit`` unfinished.

    A dataset that completes above the limit is not flagged: it is already
    whole on disk and ingest quarantines it as too large, like any file.
    """

    limit: int
    received: int = 0

    def feed(self, pdu: bytes) -> bool:
        n, last = pdata_dataset_bytes(pdu)
        self.received += n
        if last:
            self.received = 0
            return False
        return self.received > self.limit


@dataclass(frozen=True)
class Connection:
    """A connection the receiver serves: who, whether it has yet to send its association request, since when."""

    address: str
    pending: bool
    opened: float


@dataclass(frozen=True)
class Admission:
    """The answer for a new connection: serve it or not, and which silent connection to close first to make room."""

    admit: bool
    evict: int | None = None  # index into ``live``
    reason: str = ""


def admit_connection(address: str, live: Sequence[Connection], *, max_total: int, max_per_peer: int) -> Admission:
    """Decide on a new connection from ``address`` given the connections already served.

    A connection that has not sent its association request yet costs the
    sender nothing, so a full quota of them must not lock a modality out
    until they time out: when a limit is reached, the oldest such silent
    connection (of that address for the per-peer limit, of anyone for the
    total) is closed to make room.  Only associations that are under way
    are never displaced; when every slot holds one, the new connection is
    refused.
    """
    same = [i for i, c in enumerate(live) if c.address == address]
    if len(same) >= max_per_peer:
        victim = _oldest_pending(live, same)
        if victim is None:
            return Admission(False, reason=f"{address} already holds {len(same)} associations (dicom_max_associations_per_peer={max_per_peer})")
        return Admission(True, victim, f"{address} holds {len(same)} connections (dicom_max_associations_per_peer={max_per_peer})")
    if len(live) >= max_total:
        victim = _oldest_pending(live, range(len(live)))
        if victim is None:
            return Admission(False, reason=f"{len(live)} associations are under way (dicom_max_associations={max_total})")
        return Admission(True, victim, f"{len(live)} connections are open (dicom_max_associations={max_total})")
    return Admission(True)


def _oldest_pending(live: Sequence[Connection], among: Iterable[int]) -> int | None:
    pending = [i for i in among if live[i].pending]
    return min(pending, key=lambda i: live[i].opened) if pending else None
