"""`mammo up` starts ingest through `start_services`: receiver, drop folder and sweeper, all stopped by one event."""

from __future__ import annotations

import threading
import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from edge_agent.box import open_box
from edge_agent.ingest import mg
from edge_agent.ingest.service import start_services
from edge_agent.settings import Settings


def test_services_receive_from_the_drop_folder_and_stop_cleanly(tmp_path, study):
    import socket

    with socket.socket() as s:  # a free loopback port for the receiver
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings.load(env={
        "MAMMO_HOME": str(tmp_path / "home"), "MAMMO_KEYSTORE_PASSPHRASE": "daemon test",
        "MAMMO_DICOM_HOST": "127.0.0.1", "MAMMO_DICOM_PORT": str(port), "MAMMO_INGEST_DROP_POLL_S": "0.2",
    })
    box = open_box(settings, interactive=False)
    stop = threading.Event()
    threads = start_services(box, stop)
    try:
        ae = AE(ae_title="ECHO_SCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title=settings.dicom_ae_title)
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        path = mg.write(study[0], settings.home / "drop" / "a.dcm")
        end = time.monotonic() + 20
        while path.exists() and time.monotonic() < end:
            time.sleep(0.05)
        assert not path.exists()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert box.db.execute("SELECT count(*) FROM ingest_instances").fetchone()[0] == 1
    box.close()
