"""A modality pushes a 4-view study over DICOM on loopback; exactly one inference job appears."""

from __future__ import annotations

import logging

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, Verification

from edge_agent.ingest import mg
from edge_agent.ingest.scp import DicomReceiver


@pytest.fixture
def receiver(rig):
    r = DicomReceiver(rig.service, rig.settings, host="127.0.0.1", port=0)
    r.start()
    yield r
    r.stop()


def _modality(ae_title: str = "MAMMO_UNIT") -> AE:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(Verification)
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def test_c_echo_answers(receiver, rig):
    assoc = _modality().associate("127.0.0.1", receiver.port, ae_title=rig.settings.dicom_ae_title)
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == 0x0000


def test_four_view_push_gives_one_infer_job(receiver, rig, study, caplog):
    caplog.set_level(logging.DEBUG)
    assoc = _modality().associate("127.0.0.1", receiver.port, ae_title=rig.settings.dicom_ae_title)
    assert assoc.is_established
    statuses = [assoc.send_c_store(ds).Status for ds in study]
    assoc.release()
    assert statuses == [0x0000] * 4
    assert receiver.wait_ingested(30)  # acknowledged once durable in the spool; stored right after
    jobs = rig.infer_jobs()
    assert len(jobs) == 1 and jobs[0][1].startswith("study:2.25.")
    sources = {r[0] for r in rig.db.execute("SELECT source FROM ingest_instances").fetchall()}
    assert sources == {"scp:MAMMO_UNIT"}
    # The modality sends the study again (e.g. after a timeout on its side): still one job.
    assoc = _modality().associate("127.0.0.1", receiver.port, ae_title=rig.settings.dicom_ae_title)
    assert [assoc.send_c_store(ds).Status for ds in study] == [0x0000] * 4
    assoc.release()
    assert receiver.wait_ingested(30)
    assert len(rig.infer_jobs()) == 1
    for planted in ("ÇELİK", "AYŞE", mg.TURKISH_PATIENTS[0].patient_id):
        assert planted not in caplog.text  # neither ours nor pynetdicom's logs name the patient


def test_wrong_called_ae_title_is_refused(receiver):
    assoc = _modality().associate("127.0.0.1", receiver.port, ae_title="NOT_THE_BOX")
    assert not assoc.is_established


def test_parallel_associations_each_study_queued_once(receiver, rig):
    import threading

    studies = [mg.screening_study(mg.TURKISH_PATIENTS[i], seed=10 + i, size=64) for i in range(2)]
    statuses: list[int] = []

    def push(datasets) -> None:
        assoc = _modality().associate("127.0.0.1", receiver.port, ae_title=rig.settings.dicom_ae_title)
        statuses.extend(assoc.send_c_store(ds).Status for ds in datasets)
        assoc.release()

    threads = [threading.Thread(target=push, args=(s,)) for s in studies + [studies[0]]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert statuses == [0x0000] * 12
    assert receiver.wait_ingested(30)
    keys = sorted(k for _, k, _ in rig.infer_jobs())
    assert len(keys) == 2 and len(set(keys)) == 2
