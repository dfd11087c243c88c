"""The DICOM receiver is bounded: spooled datasets, a size limit enforced while a dataset arrives, connection limits, known peers.

Real sockets on loopback (127.0.0.2 stands in for another host: Linux routes all of 127/8 to lo).
"""

from __future__ import annotations

import logging
import socket
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, Verification

from edge_agent.errors import SettingsError
from edge_agent.ingest import mg
from edge_agent.ingest.peers import Peer, is_allowed, open_to_anyone, parse_address, parse_peers
from edge_agent.ingest.scp import DicomReceiver
from edge_agent.ingest.scp_limits import Admission, Connection, DatasetMeter, admit_connection, pdata_dataset_bytes
from edge_agent.settings import Settings

OTHER_HOST = "127.0.0.2"


def _loopback_alias_works() -> bool:
    try:
        with socket.socket() as s:
            s.bind((OTHER_HOST, 0))
        return True
    except OSError:
        return False


needs_alias = pytest.mark.skipif(not _loopback_alias_works(), reason=f"cannot bind {OTHER_HOST} (loopback is not 127.0.0.0/8 here)")


# -- known peers (pure) ----------------------------------------------------------------------------
def test_peers_parse_titles_addresses_networks_and_wildcards():
    peers = parse_peers(" MAMMO_UNIT@10.0.5.21, PACS@10.0.6.0/24,ANY_HOST@*, *@10.0.7.9 ,, VIEWER@fd00::5 ")
    assert [str(p) for p in peers] == ["MAMMO_UNIT@10.0.5.21/32", "PACS@10.0.6.0/24", "ANY_HOST@*", "*@10.0.7.9/32", "VIEWER@fd00::5/128"]
    assert not open_to_anyone(peers)
    assert open_to_anyone(parse_peers("MAMMO_UNIT@10.0.5.21,*")) and parse_peers("*") == (Peer(None, None),)
    assert parse_peers("") == () and parse_peers(" , ") == ()


@pytest.mark.parametrize("bad", ["MAMMO_UNIT", "MAMMO_UNIT@", "MAMMO_UNIT@modality.local", "@10.0.0.1", "A_TITLE_LONGER_THAN_16@10.0.0.1", "BAD\\AE@10.0.0.1"])
def test_peers_bad_entry_names_the_entry_and_the_syntax(bad):
    with pytest.raises(SettingsError) as err:
        parse_peers(f"GOOD@10.0.0.1,{bad}")
    assert repr(bad) in str(err.value) and "AE_TITLE@address" in str(err.value)


def test_peers_setting_is_checked_at_load(tmp_path):
    assert Settings.load(env={"MAMMO_HOME": str(tmp_path), "MAMMO_DICOM_PEERS": "MAMMO_UNIT@10.0.5.21"}).dicom_peers == "MAMMO_UNIT@10.0.5.21"
    with pytest.raises(SettingsError, match="dicom_peers"):
        Settings.load(env={"MAMMO_HOME": str(tmp_path), "MAMMO_DICOM_PEERS": "MAMMO_UNIT@modality.local"})


def test_peer_matching_by_title_and_address():
    peers = parse_peers("MAMMO_UNIT@10.0.5.21,PACS@10.0.6.0/24,ROAMING@*,*@10.0.7.9")
    assert is_allowed(peers, "MAMMO_UNIT", "10.0.5.21", allow_loopback=False)
    assert is_allowed(peers, "MAMMO_UNIT  ", "::ffff:10.0.5.21", allow_loopback=False)  # padded title, IPv4-mapped address
    assert not is_allowed(peers, "MAMMO_UNIT", "10.0.5.22", allow_loopback=False)
    assert not is_allowed(peers, "mammo_unit", "10.0.5.21", allow_loopback=False)  # AE titles are case-sensitive
    assert is_allowed(peers, "PACS", "10.0.6.200", allow_loopback=False)
    assert is_allowed(peers, "ROAMING", "192.168.1.4", allow_loopback=False)
    assert is_allowed(peers, "WHATEVER", "10.0.7.9", allow_loopback=False)
    assert not is_allowed(peers, "INTRUDER", "10.0.5.21", allow_loopback=False)
    assert not is_allowed((), "ANY", "127.0.0.1", allow_loopback=False)
    assert is_allowed((), "ANY", "127.0.0.1", allow_loopback=True) and is_allowed((), "ANY", "::1", allow_loopback=True)
    assert not is_allowed((), "ANY", "10.0.5.21", allow_loopback=True)
    assert parse_address("fe80::1%eth0") == parse_address("fe80::1") and parse_address("not an ip") is None


# -- size and connection limits (pure) ---------------------------------------------------------------
def _pdv(control: int, payload: bytes, context_id: int = 1) -> bytes:
    return (len(payload) + 2).to_bytes(4, "big") + bytes([context_id, control]) + payload


def _pdu(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return bytes([0x04, 0]) + len(body).to_bytes(4, "big") + body


def test_pdata_counts_dataset_fragments_not_commands():
    assert pdata_dataset_bytes(_pdu(_pdv(0x03, b"c" * 50))) == (0, False)  # last command fragment
    assert pdata_dataset_bytes(_pdu(_pdv(0x00, b"d" * 100), _pdv(0x00, b"d" * 20))) == (120, False)
    assert pdata_dataset_bytes(_pdu(_pdv(0x02, b"d" * 7))) == (7, True)
    assert pdata_dataset_bytes(bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])) == (0, False)  # A-RELEASE-RQ
    assert pdata_dataset_bytes(_pdu(_pdv(0x00, b"d" * 100))[:60]) == (60 - 12, False)  # truncated input never overcounts


def test_meter_flags_an_unfinished_dataset_past_the_limit_only():
    meter = DatasetMeter(limit=250)
    assert not meter.feed(_pdu(_pdv(0x03, b"c" * 80)))
    assert not meter.feed(_pdu(_pdv(0x00, b"d" * 200)))
    assert meter.feed(_pdu(_pdv(0x00, b"d" * 100))) and meter.received == 300
    small = DatasetMeter(limit=250)
    for _ in range(5):  # many datasets on one association: each one counted on its own
        assert not small.feed(_pdu(_pdv(0x00, b"d" * 200))) and not small.feed(_pdu(_pdv(0x02, b"d" * 40)))
    # a dataset that completes above the limit is whole on disk: ingest quarantines it like any too-large file
    assert not DatasetMeter(limit=10).feed(_pdu(_pdv(0x02, b"d" * 40)))


def test_connection_limits_make_room_by_closing_silent_connections_only():
    def conn(address: str, pending: bool, opened: float) -> Connection:
        return Connection(address, pending, opened)

    flood = [conn("10.0.0.9", True, t) for t in (3.0, 1.0, 2.0, 4.0)] + [conn("10.0.0.1", False, 0.5)]
    # the flooding host's oldest silent connection makes room for its new one; other hosts are served as usual
    assert admit_connection("10.0.0.9", flood, max_total=10, max_per_peer=4) == Admission(True, 1, "10.0.0.9 holds 4 connections (dicom_max_associations_per_peer=4)")
    assert admit_connection("10.0.0.1", flood, max_total=10, max_per_peer=4) == Admission(True)
    # total reached: the oldest silent connection of anyone goes, never an association under way
    assert admit_connection("10.0.0.2", flood, max_total=5, max_per_peer=4).evict == 1
    busy = [conn("10.0.0.9", False, t) for t in (1.0, 2.0)]
    refused = admit_connection("10.0.0.9", busy, max_total=10, max_per_peer=2)
    assert not refused.admit and "already holds 2 associations" in refused.reason
    assert not admit_connection("10.0.0.3", busy, max_total=2, max_per_peer=4).admit


# -- real sockets -------------------------------------------------------------------------------------
class RecordingService:
    """The real ingest service, with the paths the receiver hands it written down (an interface, not a patch)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.paths: list[tuple[Path, int, int]] = []
        self.byte_calls = 0
        self.labels: list[str | None] = []

    def ingest_path(self, path, *, source, label=None):
        st = Path(path).stat()
        self.paths.append((Path(path), stat.S_IMODE(st.st_mode), st.st_size))
        self.labels.append(label)
        return self.inner.ingest_path(path, source=source, label=label)

    def ingest_bytes(self, data, *, source, label=""):
        self.byte_calls += 1
        return self.inner.ingest_bytes(data, source=source, label=label)


@pytest.fixture
def start_receiver():
    started: list[DicomReceiver] = []

    def start(service, settings) -> DicomReceiver:
        r = DicomReceiver(service, settings, host="127.0.0.1" if settings.dicom_host == "0.0.0.0" else settings.dicom_host, port=0)
        r.start()
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def _modality(ae_title: str = "MAMMO_UNIT") -> AE:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(Verification)
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    return ae


def _associate(receiver: DicomReceiver, ae_title: str = "MAMMO_UNIT", bind: str = "127.0.0.1"):
    return _modality(ae_title).associate("127.0.0.1", receiver.port, ae_title=receiver.ae_title, bind_address=(bind, 0))


def _wait_until(condition, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _spooled(spool: Path) -> list[Path]:
    """Files left in the spool, the acknowledged ones waiting in spool/accepted included."""
    return [p for p in spool.rglob("*") if p.is_file()]


def _count(rig, table: str) -> int:
    return rig.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_stored_dataset_goes_through_a_private_spool_file(rig, study, start_receiver):
    service = RecordingService(rig.service)
    receiver = start_receiver(service, rig.settings)
    spool = rig.settings.dicom_spool_dir
    assert spool == rig.settings.home / "spool" and stat.S_IMODE(spool.stat().st_mode) == 0o700
    assoc = _associate(receiver)
    assert assoc.is_established
    assert assoc.send_c_store(study[0]).Status == 0x0000
    assoc.release()
    assert receiver.wait_ingested(30)
    assert service.byte_calls == 0 and len(service.paths) == 1
    path, mode, size = service.paths[0]
    assert path.parent == spool / "accepted" and mode == 0o600 and size > 128 * 128
    assert "MAMMO_UNIT" in path.name
    assert service.labels == ["C-STORE from MAMMO_UNIT"]  # the sender, not the spool file's name
    assert _count(rig, "ingest_instances") == 1
    assert _wait_until(lambda: not _spooled(spool)), _spooled(spool)


def test_spool_left_by_a_killed_daemon_is_emptied_at_start(rig, start_receiver, caplog):
    spool = rig.settings.dicom_spool_dir
    spool.mkdir(parents=True)
    (spool / "cstore-MAMMO_UNIT-left.dcm").write_bytes(b"\0" * 1000)
    caplog.set_level(logging.WARNING)
    start_receiver(rig.service, rig.settings)
    assert not _spooled(spool) and "partial DICOM transfer" in caplog.text


def test_oversized_dataset_is_aborted_while_it_arrives(rig_factory, tmp_path, study, start_receiver, caplog):
    limit = 1_000_000
    rig = rig_factory(tmp_path / "home", ingest_max_file_bytes=limit, dicom_max_pdu_bytes=65536)
    receiver = start_receiver(rig.service, rig.settings)
    big = mg.mammogram(np.full((2048, 2048), 1000, dtype=np.uint16), patient=mg.TURKISH_PATIENTS[1], laterality="L", view="CC")
    full_size = len(mg.to_bytes(big))
    assert full_size > 8 * limit
    caplog.set_level(logging.WARNING)
    assoc = _associate(receiver)
    assert assoc.is_established
    status = assoc.send_c_store(big)
    assert "Status" not in status  # no answer: the receiver aborted the association
    assert _wait_until(lambda: assoc.is_aborted)
    # It stopped reading after about the limit (one PDU more), far before the whole dataset arrived.
    calling, address, received = receiver.aborted[-1]
    assert (calling, address) == ("MAMMO_UNIT", "127.0.0.1")
    assert limit < received <= limit + 65536 < full_size
    assert "aborted after" in caplog.text and "ingest_max_file_bytes" in caplog.text
    # What arrived is quarantined as too large (a person sees the refusal), nothing is stored, the spool is emptied.
    assert _wait_until(lambda: _count(rig, "ingest_quarantine") == 1)
    assert rig.db.execute("SELECT reason_code, source FROM ingest_quarantine").fetchone() == ("file_too_large", "scp:MAMMO_UNIT")
    assert _count(rig, "ingest_instances") == 0
    assert _wait_until(lambda: not _spooled(rig.settings.dicom_spool_dir))
    # The modality can go on: a normal image on a new association is stored.
    assoc = _associate(receiver)
    assert assoc.send_c_store(study[0]).Status == 0x0000
    assoc.release()
    assert receiver.wait_ingested(30)
    assert _count(rig, "ingest_instances") == 1


def _idle_connections(receiver: DicomReceiver, hosts: list[str]) -> list[socket.socket]:
    idle = []
    for host in hosts:
        s = socket.socket()
        s.bind((host, 0))
        s.connect(("127.0.0.1", receiver.port))
        s.settimeout(10)
        idle.append(s)
    return idle


def _echo(receiver: DicomReceiver, bind: str = "127.0.0.1") -> None:
    assoc = _associate(receiver, bind=bind)
    assert assoc.is_established, "the modality was locked out"
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


@pytest.mark.parametrize("idle_host", ["127.0.0.1", OTHER_HOST], ids=["same-host", "other-host"])
def test_idle_connections_do_not_lock_out_a_modality(rig_factory, tmp_path, start_receiver, idle_host):
    if idle_host == OTHER_HOST and not _loopback_alias_works():
        pytest.skip(f"cannot bind {OTHER_HOST}")
    rig = rig_factory(tmp_path / "home", dicom_acse_timeout_s=60.0)  # long: what closes them below is not the timeout
    receiver = start_receiver(rig.service, rig.settings)
    idle = _idle_connections(receiver, [idle_host] * 12)
    try:
        _echo(receiver)  # served at once, although 12 connections sit idle (it used to be refused for ~28 s)
        # each connection past dicom_max_associations_per_peer closed that host's oldest silent one
        per_peer = rig.settings.dicom_max_associations_per_peer
        assert [s.recv(1) for s in idle[: 12 - per_peer]] == [b""] * (12 - per_peer)
    finally:
        for s in idle:
            s.close()


@needs_alias
def test_idle_connections_from_many_hosts_do_not_lock_out_a_modality(rig_factory, tmp_path, start_receiver):
    rig = rig_factory(tmp_path / "home", dicom_acse_timeout_s=60.0, dicom_max_associations=5)
    receiver = start_receiver(rig.service, rig.settings)
    idle = _idle_connections(receiver, [f"127.0.0.{2 + i % 4}" for i in range(12)])
    try:
        _echo(receiver)
    finally:
        for s in idle:
            s.close()


def test_associations_under_way_are_never_displaced(rig_factory, tmp_path, start_receiver, caplog):
    rig = rig_factory(tmp_path / "home", dicom_max_associations=2)
    receiver = start_receiver(rig.service, rig.settings)
    held = [_associate(receiver) for _ in range(2)]
    assert all(a.is_established for a in held)
    caplog.set_level(logging.WARNING)
    (refused,) = _idle_connections(receiver, ["127.0.0.1"])
    with refused:
        assert refused.recv(1) == b""  # closed by the receiver, not by a timeout
    assert "associations are under way (dicom_max_associations=2)" in caplog.text
    for a in held:
        assert a.send_c_echo().Status == 0x0000
        a.release()
    _echo(receiver)  # a slot is free again


def test_a_silent_connection_is_closed_after_the_acse_timeout(rig_factory, tmp_path, start_receiver):
    rig = rig_factory(tmp_path / "home", dicom_acse_timeout_s=1.0)
    receiver = start_receiver(rig.service, rig.settings)
    (s,) = _idle_connections(receiver, ["127.0.0.1"])
    with s:
        assert s.recv(1) == b""


@needs_alias
def test_unknown_peer_is_refused_and_logged(rig_factory, tmp_path, start_receiver, caplog):
    rig = rig_factory(tmp_path / "home", dicom_peers="MAMMO_UNIT@127.0.0.1", dicom_allow_loopback=False)
    receiver = start_receiver(rig.service, rig.settings)
    caplog.set_level(logging.WARNING)
    assoc = _associate(receiver, "INTRUDER")
    assert assoc.is_rejected and not assoc.is_established
    assert "'INTRUDER' from 127.0.0.1 is not a known peer" in caplog.text
    assoc = _associate(receiver, "MAMMO_UNIT", bind=OTHER_HOST)  # the right title from the wrong host
    assert assoc.is_rejected
    assert f"'MAMMO_UNIT' from {OTHER_HOST} is not a known peer" in caplog.text
    assert f"add MAMMO_UNIT@{OTHER_HOST} to dicom_peers" in caplog.text
    assoc = _associate(receiver, "MAMMO_UNIT")
    assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_wrong_called_title_refusal_names_the_caller(rig, start_receiver, caplog):
    receiver = start_receiver(rig.service, rig.settings)
    caplog.set_level(logging.WARNING)
    assoc = _modality("MAMMO_UNIT").associate("127.0.0.1", receiver.port, ae_title="NOT_THE_BOX")
    assert assoc.is_rejected
    assert "calling AE 'MAMMO_UNIT' from 127.0.0.1, called AE 'NOT_THE_BOX'" in caplog.text


@needs_alias
def test_loopback_is_allowed_by_default_and_anyone_is_a_warning(rig_factory, tmp_path, start_receiver, caplog):
    rig = rig_factory(tmp_path / "home")
    receiver = start_receiver(rig.service, rig.settings)
    assoc = _associate(receiver, "ANY_TOOL", bind=OTHER_HOST)  # 127.0.0.2 is loopback too
    assert assoc.is_established
    assoc.release()
    caplog.set_level(logging.WARNING)
    start_receiver(rig.service, Settings.load(env={"MAMMO_HOME": str(tmp_path / "home"), "MAMMO_DICOM_PEERS": "*"}))
    assert "dicom_peers contains '*'" in caplog.text


# -- memory: a daemon-like process, measured by its own peak RSS (no timing involved) ----------------
_RECEIVER_PROCESS = r"""
import json, resource, sys
from edge_agent.ingest.scp import DicomReceiver
from edge_agent.settings import Settings

class Kept:
    kept = True

class SizeOnly:
    # Stands in for the ingest service: notes what arrived without reading it, so only the receiver's memory counts.
    sizes = []
    def ingest_path(self, path, *, source, label=None):
        self.sizes.append(path.stat().st_size)
        return Kept()
    def ingest_bytes(self, data, *, source, label=""):
        self.sizes.append(len(data))
        return Kept()

service = SizeOnly()
receiver = DicomReceiver(service, Settings.load(env={"MAMMO_HOME": sys.argv[1]}), host="127.0.0.1", port=0)
print(receiver.start(), flush=True)
for line in sys.stdin:
    if line.strip() == "report":
        receiver.wait_ingested(30)  # acknowledged when durable; handed to the service right after
        print(json.dumps({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "sizes": service.sizes}), flush=True)
receiver.stop()
"""


def test_a_large_c_store_is_not_held_in_the_receivers_memory(tmp_path, study):
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen([sys.executable, "-c", _RECEIVER_PROCESS, str(tmp_path / "home")], cwd=root,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())

        def send(ds) -> dict:
            assoc = _modality().associate("127.0.0.1", port, ae_title="MAMMO_EDGE")
            assert assoc.send_c_store(ds).Status == 0x0000
            assoc.release()
            proc.stdin.write("report\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())

        warm = send(study[0])  # threads, imports and first-use allocations are not the dataset's
        big = mg.mammogram(np.full((4096, 8192), 1000, dtype=np.uint16), patient=mg.TURKISH_PATIENTS[2], laterality="R", view="MLO")
        after = send(big)
        assert after["sizes"][-1] > 64 * 2**20  # the whole 64 MiB dataset arrived (in the spool file)
        grew_mib = (after["maxrss_kib"] - warm["maxrss_kib"]) / 1024
        print(f"receiver peak RSS grew {grew_mib:.1f} MiB for a 64 MiB C-STORE")
        assert grew_mib < 24, f"receiver peak memory grew by {grew_mib:.0f} MiB for a 64 MiB dataset"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()
