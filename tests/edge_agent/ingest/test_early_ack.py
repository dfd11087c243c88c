"""A C-STORE is acknowledged once durable in the spool; a daemon killed after the answer stores the image when it starts again."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation

from edge_agent.ingest import mg
from edge_agent.ingest.scp import DicomReceiver
from edge_agent.ingest.service import IngestService
from edge_agent.queue import JobQueue
from edge_agent.settings import Settings
from edge_agent.store import open_database
from provisioning.keystore import FileKeystore, KdfParams

ROOT = Path(__file__).resolve().parents[3]
HOOKS = Path(__file__).parent
KDF = "KdfParams(1, 8 * 1024, 1)"

# The daemon's receiver and ingest, with worker processes that never finish a file marked HANG-FOREVER: the only
# way its C-STOREs can be acknowledged is before ingest (and nothing gets stored before the kill).
_DAEMON = rf"""
import sys
sys.path.insert(0, {str(HOOKS)!r})
import pool_hooks
from edge_agent.ingest.scp import DicomReceiver
from edge_agent.ingest.service import IngestService
from edge_agent.queue import JobQueue
from edge_agent.settings import Settings
from edge_agent.store import open_database
from provisioning.keystore import FileKeystore, KdfParams

home = sys.argv[1]
settings = Settings.load(env={{"MAMMO_HOME": home, "MAMMO_INGEST_TIMEOUT_S": "600"}})
db = open_database(settings.db_path)
keystore = FileKeystore.open_or_create(settings.home / "keystore.json", "early ack", {KDF})
service = IngestService(db=db, keystore=keystore, queue=JobQueue(db), settings=settings, workers=1, work=pool_hooks.misbehave)
receiver = DicomReceiver(service, settings, host="127.0.0.1", port=0)
print(receiver.start(), flush=True)
sys.stdin.read()
"""


def _views(n: int) -> list[pydicom.Dataset]:
    views = mg.screening_study(mg.TURKISH_PATIENTS[1], seed=5, size=64)[:n]
    out = []
    for ds in views:
        ds = pydicom.dcmread(io.BytesIO(mg.to_bytes(ds)))
        ds.ImageComments = "HANG-FOREVER"
        out.append(ds)
    return out


def _send(port: int, datasets: list[pydicom.Dataset]) -> list[int]:
    ae = AE(ae_title="MAMMO_UNIT")
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port, ae_title="MAMMO_EDGE")
    assert assoc.is_established
    try:
        return [int(getattr(assoc.send_c_store(ds), "Status", -1)) for ds in datasets]
    finally:
        assoc.release()


@pytest.mark.slow
def test_images_acknowledged_before_a_sigkill_are_stored_from_the_spool_at_the_next_start(tmp_path):
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-c", _DAEMON, str(home)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        views = _views(2)
        # Ingest never finishes here, so Success can only mean the files are durable in the spool.
        assert _send(port, views) == [0x0000, 0x0000]
        accepted = home / "spool" / "accepted"
        assert len(list(accepted.glob("*.dcm"))) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    settings = Settings.load(env={"MAMMO_HOME": str(home)})
    db = open_database(settings.db_path)
    try:
        assert db.execute("SELECT count(*) FROM ingest_instances").fetchone()[0] == 0  # killed before anything was stored
        keystore = FileKeystore.open_or_create(home / "keystore.json", "early ack", KdfParams(1, 8 * 1024, 1))
        service = IngestService(db=db, keystore=keystore, queue=JobQueue(db), settings=settings)
        receiver = DicomReceiver(service, settings, host="127.0.0.1", port=0)
        receiver.start()  # ingests what was acknowledged before it listens
        try:
            rows = db.execute("SELECT source, modality FROM ingest_instances").fetchall()
            assert rows == [("scp:MAMMO_UNIT", "MG")] * 2
            assert not list(accepted.iterdir())
        finally:
            receiver.stop()
    finally:
        db.conn.close()


def test_with_no_backlog_an_image_is_acknowledged_only_once_stored(tmp_path):
    settings = Settings.load(env={"MAMMO_HOME": str(tmp_path / "home")}, home=tmp_path / "home", dicom_ack_backlog=0)
    db = open_database(settings.db_path)
    keystore = FileKeystore.open_or_create(settings.home / "keystore.json", "early ack", KdfParams(1, 8 * 1024, 1))
    service = IngestService(db=db, keystore=keystore, queue=JobQueue(db), settings=settings)
    receiver = DicomReceiver(service, settings, host="127.0.0.1", port=0)
    receiver.start()
    try:
        ds = pydicom.dcmread(io.BytesIO(mg.to_bytes(mg.screening_study(mg.TURKISH_PATIENTS[2], seed=6, size=64)[0])))
        assert _send(receiver.port, [ds]) == [0x0000]
        assert receiver.accepted is None
        assert db.execute("SELECT count(*) FROM ingest_instances").fetchone()[0] == 1  # no waiting: stored before the answer
    finally:
        receiver.stop()
        db.conn.close()
