"""A referred study goes to a loopback PACS: its images, the AI result as SR and the heatmaps, once, even across an outage."""

from __future__ import annotations

import io
import logging
import threading

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from edge_agent.errors import PacsError
from edge_agent.ingest import mg
from edge_agent.pacs import service
from edge_agent.pacs.outbox import states

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def export_once(clinic, dest: str) -> None:
    worker, _ = service.make_worker(clinic.box, threading.Event())
    try:
        worker.run_once()
    finally:
        worker.queue.db.conn.close()


def test_referred_study_arrives_identified_with_sr_and_heatmaps(clinic_factory, pacs, caplog):
    caplog.set_level(logging.DEBUG)
    hospital = pacs()
    clinic = clinic_factory(pacs_destinations=f"HOSP_PACS@127.0.0.1:{hospital.port}/identified")
    patient = mg.TURKISH_PATIENTS[0]
    results = clinic.push_study(1, patient=patient, accession="ACC77")
    clinic.triage()
    study_uid = results[0].study_uid

    [queued] = service.refer_to_pacs(clinic.box.queue, clinic.box.settings, study_uid, requested_by="dr.kaya")
    assert queued.state == "queued" and queued.mode == "identified"
    export_once(clinic, queued.destination)

    [state] = service.export_states(clinic.box.db, study_uid)
    assert state.state == "sent" and state.objects_sent == state.objects_total == 9
    images = hospital.of_kind("MG")
    assert len(images) == 4
    for ds in images:  # the care team's copy: her own name, ID and real dates, and the box's stable UIDs
        assert str(ds.PatientName) == patient.name and ds.PatientID == patient.patient_id
        assert ds.PatientBirthDate == patient.birth_date and ds.StudyDate == "20260315"
        assert ds.StudyInstanceUID == study_uid and "PatientIdentityRemoved" not in ds
        assert "PixelData" in ds
    assert {ds.SOPInstanceUID for ds in images} == {r.sop_instance_uid for r in results}
    assert set(hospital.callers) == {clinic.box.settings.dicom_ae_title}

    [report] = [ds for ds in hospital.received.values() if ds.SOPClassUID == SR_CLASS]
    assert report.StudyInstanceUID == study_uid and str(report.PatientName) == patient.name
    heatmaps = [ds for ds in hospital.received.values() if ds.SOPClassUID == SC_CLASS]
    assert len(heatmaps) == 4
    for sc in heatmaps:
        assert "AI" in sc.SeriesDescription and "not for diagnosis" in sc.SeriesDescription
        assert sc.ImageType[:2] == ["DERIVED", "SECONDARY"] and sc.BurnedInAnnotation == "NO"
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID in {ds.SOPInstanceUID for ds in images}
        assert sc.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in images}
    for planted in ("ÇELİK", "AYŞE", patient.patient_id):
        assert planted not in caplog.text  # the export's logs, ours and pynetdicom's, name no one
    # the original images were not touched: the heatmap lives only in its own series
    stored = {r.sop_instance_uid: clinic.ingest.store.get(r.digest) for r in results}
    for ds in images:
        assert ds.PixelData == pydicom.dcmread(io.BytesIO(stored[ds.SOPInstanceUID])).PixelData


def test_a_second_request_sends_nothing_new(clinic_factory, pacs):
    hospital = pacs()
    dest = f"HOSP_PACS@127.0.0.1:{hospital.port}"
    clinic = clinic_factory(pacs_destinations=dest)
    study_uid = clinic.push_study(2)[0].study_uid
    clinic.triage()
    first = service.export_study(clinic.box.queue, clinic.box.settings, study_uid, dest, requested_by="cli")
    export_once(clinic, dest)
    again = service.export_study(clinic.box.queue, clinic.box.settings, study_uid, dest, requested_by="cli")
    export_once(clinic, dest)
    assert again.job_id == first.job_id and again.state == "sent"
    assert len(hospital.arrivals) == len(set(hospital.arrivals)) == 9


def test_pacs_down_mid_export_keeps_it_queued_and_it_completes_once_when_back(clinic_factory, pacs):
    hospital = pacs(refuse_after=3)  # takes three objects, then fails ...
    dest = f"HOSP_PACS@127.0.0.1:{hospital.port}"
    clinic = clinic_factory(pacs_destinations=dest)
    study_uid = clinic.push_study(3)[0].study_uid
    clinic.triage()
    service.export_study(clinic.box.queue, clinic.box.settings, study_uid, dest, requested_by="cli")
    export_once(clinic, dest)
    [state] = service.export_states(clinic.box.db, study_uid)
    assert state.state == "retrying" and state.objects_sent == 3 and "0xA700" in state.last_error
    hospital.stop()  # ... and is down for the next attempt
    export_once(clinic, dest)
    [state] = service.export_states(clinic.box.db, study_uid)
    assert state.state == "retrying" and state.objects_sent == 3 and "did not answer" in state.last_error
    assert clinic.box.queue.get_state(state.job_id) == "ready"  # still queued, visible, not lost

    first_three = list(hospital.arrivals)
    back = pacs(port=hospital.port, received=hospital.received, arrivals=hospital.arrivals)
    export_once(clinic, dest)
    [state] = service.export_states(clinic.box.db, study_uid)
    assert state.state == "sent" and state.objects_sent == 9 and state.attempts == 3
    assert back.arrivals[:3] == first_three and len(back.arrivals) == len(set(back.arrivals)) == 9  # each object once


def test_a_resend_after_a_lost_acknowledgement_carries_the_same_uids(clinic_factory, pacs):
    """The box died between the PACS's answer and its own record: the PACS gets the very same objects again, no new ones."""
    hospital = pacs()
    dest = f"HOSP_PACS@127.0.0.1:{hospital.port}"
    clinic = clinic_factory(pacs_destinations=dest)
    study_uid = clinic.push_study(4)[0].study_uid
    clinic.triage()
    state = service.export_study(clinic.box.queue, clinic.box.settings, study_uid, dest, requested_by="cli")
    export_once(clinic, dest)
    before = set(hospital.received)
    clinic.box.db.execute("DELETE FROM pacs_sent")
    clinic.box.db.execute("UPDATE jobs SET state = 'dead', closed_at = 1 WHERE id = ?", [state.job_id])
    clinic.box.db.execute("UPDATE pacs_exports SET state = 'failed'")
    service.export_study(clinic.box.queue, clinic.box.settings, study_uid, dest, requested_by="cli")
    export_once(clinic, dest)
    assert len(hospital.arrivals) == 18 and set(hospital.received) == before


def test_deidentified_destination_gets_its_own_pseudonyms_and_uids(clinic_factory, pacs):
    research = pacs(ae_title="RESEARCH")
    dest = f"RESEARCH@127.0.0.1:{research.port}/deidentified"
    clinic = clinic_factory(pacs_destinations=dest)
    patient = mg.TURKISH_PATIENTS[1]
    results = clinic.push_study(5, patient=patient)
    clinic.triage()
    study_uid = results[0].study_uid
    assert service.refer_to_pacs(clinic.box.queue, clinic.box.settings, study_uid, requested_by="dr") == []  # a referral goes to the care team only
    service.export_study(clinic.box.queue, clinic.box.settings, study_uid, dest.rpartition("/")[0], requested_by="cli")
    export_once(clinic, dest)
    images = research.of_kind("MG")
    assert len(images) == 4 and len(research.received) == 9
    box_uids = {r.sop_instance_uid for r in results}
    pseudonym = clinic.box.db.execute("SELECT pseudonym FROM ingest_studies WHERE study_uid = ?", [study_uid]).fetchone()[0]
    for ds in images:
        assert ds.PatientIdentityRemoved == "YES" and ds.SOPInstanceUID not in box_uids and ds.StudyInstanceUID != study_uid
        assert patient.patient_id not in ds.PatientID and ds.PatientID != pseudonym
        assert str(ds.PatientName) != patient.name
    [report] = [ds for ds in research.received.values() if ds.SOPClassUID == SR_CLASS]
    assert report.PatientID == images[0].PatientID
    refs = {sop.ReferencedSOPInstanceUID for series in report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            for sop in series.ReferencedSOPSequence}
    assert {ds.SOPInstanceUID for ds in images} <= refs
    hd.sr.ComprehensiveSR.from_dataset(report)


def test_unknown_destination_is_refused_with_the_fix(clinic_factory):
    clinic = clinic_factory(pacs_destinations="HOSP_PACS@127.0.0.1:104")
    study_uid = clinic.push_study(6)[0].study_uid
    with pytest.raises(PacsError, match="pacs_destinations"):
        service.export_study(clinic.box.queue, clinic.box.settings, study_uid, "OTHER@127.0.0.1:104", requested_by="cli")
    assert states(clinic.box.db) == []


def test_export_waits_for_the_ai_result_then_goes(clinic_factory, pacs):
    hospital = pacs()
    dest = f"HOSP_PACS@127.0.0.1:{hospital.port}"
    clinic = clinic_factory(pacs_destinations=dest)
    study_uid = clinic.push_study(8)[0].study_uid
    service.export_study(clinic.box.queue, clinic.box.settings, study_uid, dest, requested_by="cli")  # referred before inference ran
    export_once(clinic, dest)
    [state] = service.export_states(clinic.box.db, study_uid)
    assert state.state == "retrying" and "waiting for its AI result" in state.last_error and hospital.arrivals == []
    clinic.triage()
    export_once(clinic, dest)
    [state] = service.export_states(clinic.box.db, study_uid)
    assert state.state == "sent" and len(hospital.arrivals) == 9


def test_a_pacs_that_takes_no_sr_is_named_in_the_state(clinic_factory, pacs):
    hospital = pacs(only=(mg.MG_FOR_PRESENTATION,))
    dest = f"HOSP_PACS@127.0.0.1:{hospital.port}"
    clinic = clinic_factory(pacs_destinations=dest)
    study_uid = clinic.push_study(9)[0].study_uid
    clinic.triage()
    service.export_study(clinic.box.queue, clinic.box.settings, study_uid, dest, requested_by="cli")
    export_once(clinic, dest)
    [state] = service.export_states(clinic.box.db, study_uid)
    assert state.state == "retrying" and "does not accept Secondary Capture Image Storage" in state.last_error
    assert state.objects_sent == 1 and len(hospital.of_kind("MG")) == 1  # what it took is recorded; the fix is on the PACS side


def test_compressed_images_go_uncompressed_to_a_pacs_that_takes_only_that(clinic_factory, pacs):
    hospital = pacs(syntaxes=[ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    dest = f"HOSP_PACS@127.0.0.1:{hospital.port}"
    clinic = clinic_factory(pacs_destinations=dest)
    results = clinic.push_study(10, compress=RLELossless)
    stored = pydicom.dcmread(io.BytesIO(clinic.ingest.store.get(results[0].digest)))
    assert stored.file_meta.TransferSyntaxUID == RLELossless  # kept as the unit sent it
    clinic.triage()
    service.export_study(clinic.box.queue, clinic.box.settings, results[0].study_uid, dest, requested_by="cli")
    export_once(clinic, dest)
    [state] = service.export_states(clinic.box.db, results[0].study_uid)
    assert state.state == "sent"
    images = hospital.of_kind("MG")
    assert len(images) == 4 and {ds.file_meta.TransferSyntaxUID for ds in images} <= {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
    original = stored.pixel_array
    [same] = [ds for ds in images if ds.SOPInstanceUID == stored.SOPInstanceUID]
    assert (same.pixel_array == original).all()  # lossless: the same pixels
