"""The mammography unit asks the box for the day's screenings (C-FIND), and its images link back to the schedule."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, ModalityWorklistInformationFind

from edge_agent.errors import PacsError
from edge_agent.ingest import mg
from edge_agent.ingest.scp import DicomReceiver
from edge_agent.pacs import service

REPO = Path(__file__).resolve().parents[3]
UNIT = "MAMMO_UNIT"


def today(settings) -> str:
    return dt.datetime.now(ZoneInfo(settings.timezone)).strftime("%Y%m%d")


def query(**keys) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 148"  # the unit's character set (Latin-5: Turkish)
    ds.PatientName = keys.get("name", "")
    ds.PatientID = keys.get("patient_id", "")
    ds.PatientBirthDate = ""
    ds.AccessionNumber = keys.get("accession", "")
    ds.StudyInstanceUID = ""
    step = Dataset()
    step.Modality = "MG"
    step.ScheduledStationAETitle = ""
    step.ScheduledProcedureStepStartDate = keys.get("date", "")
    step.ScheduledProcedureStepStartTime = ""
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def c_find(port: int, identifier: Dataset, *, ae_title: str = UNIT, called: str = "MAMMO_EDGE") -> tuple[bool, list[Dataset]]:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False, []
    answers = [ds for status, ds in assoc.send_c_find(identifier, ModalityWorklistInformationFind) if status and status.Status == 0xFF00]
    assoc.release()
    return True, answers


@pytest.fixture
def unit_clinic(clinic_factory):
    """A box that knows only the unit MAMMO_UNIT at 127.0.0.1 (loopback is not let in by itself), its receiver listening."""
    clinic = clinic_factory(dicom_peers=f"{UNIT}@127.0.0.1", dicom_allow_loopback=False)
    receiver = DicomReceiver(clinic.ingest, clinic.box.settings, host="127.0.0.1", port=0)
    receiver.start()
    clinic.receiver = receiver
    yield clinic
    receiver.stop()


def test_unit_gets_todays_scheduled_women_and_their_images_link_back(unit_clinic, caplog):
    caplog.set_level(logging.DEBUG)
    clinic, box = unit_clinic, unit_clinic.box
    day = today(box.settings)
    ayse, gulsen = mg.TURKISH_PATIENTS[0], mg.TURKISH_PATIENTS[1]
    service.schedule_screening(service.worklist_book(box), patient_id=ayse.patient_id, name=ayse.name, birth_date=ayse.birth_date, accession="ACC100",
                               scheduled=day + "0930", requested_by="tech")
    service.schedule_screening(service.worklist_book(box), patient_id=gulsen.patient_id, name=gulsen.name, birth_date=gulsen.birth_date, accession="ACC101",
                               scheduled=day + "1000", requested_by="tech")
    tomorrow = (dt.datetime.strptime(day, "%Y%m%d") + dt.timedelta(days=1)).strftime("%Y%m%d")
    service.schedule_screening(service.worklist_book(box), patient_id="99999999999", name="KAYA^ZEHRA", birth_date="19700101", accession="ACC200",
                               scheduled=tomorrow + "0900", requested_by="tech")

    ok, answers = c_find(clinic.receiver.port, query())
    assert ok and [(str(a.PatientName), a.PatientID, a.AccessionNumber) for a in answers] == [
        (ayse.name, ayse.patient_id, "ACC100"), (gulsen.name, gulsen.patient_id, "ACC101")]
    first = answers[0]
    assert first.PatientBirthDate == ayse.birth_date and first.SpecificCharacterSet == "ISO_IR 148"
    assert first.ScheduledProcedureStepSequence[0].Modality == "MG"
    assert first.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate == day
    assert first.StudyInstanceUID.startswith("2.25.")
    ok, only = c_find(clinic.receiver.port, query(name="ÇELİK*"))
    assert [a.PatientID for a in only] == [ayse.patient_id]
    ok, later = c_find(clinic.receiver.port, query(date=tomorrow))
    assert [a.AccessionNumber for a in later] == ["ACC200"]

    # The unit images Ayşe with what the worklist gave it, and sends the study to the box.
    ae = AE(ae_title=UNIT)
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", clinic.receiver.port, ae_title=box.settings.dicom_ae_title)
    patient = mg.FakePatient(str(first.PatientName), first.PatientID, first.PatientBirthDate)
    study = [mg.mammogram(mg.synthetic_pixels(i, lat, 128), patient=patient, laterality=lat, view=view, accession=first.AccessionNumber,
                          study_uid=first.StudyInstanceUID, study_date=day, instance_number=i + 1)
             for i, (lat, view) in enumerate(mg.SCREENING_VIEWS)]
    assert [assoc.send_c_store(ds).Status for ds in study] == [0] * 4
    assoc.release()
    assert clinic.receiver.wait_ingested(30)
    study_uid = box.db.execute("SELECT study_uid FROM ingest_studies").fetchone()[0]
    entries = {e.accession: e for e in service.worklist_today(service.worklist_book(box))}
    assert entries["ACC100"].state == "done" and entries["ACC100"].study_uid == study_uid
    assert entries["ACC101"].state == "scheduled" and entries["ACC101"].study_uid is None
    assert clinic.ingest.worklist.accession_of(study_uid) == "ACC100"  # an identified export carries it again
    ok, left = c_find(clinic.receiver.port, query())
    assert [a.AccessionNumber for a in left] == ["ACC101"]  # done: off the worklist
    for planted in ("ÇELİK", "ŞAHİN", ayse.patient_id, gulsen.patient_id):
        assert planted not in caplog.text  # neither ours nor pynetdicom's logs name a woman (queries and answers included)


def test_unknown_peer_gets_no_worklist_answers(unit_clinic):
    box = unit_clinic.box
    service.schedule_screening(service.worklist_book(box), patient_id="38291047562", name="ÇELİK^AYŞE", birth_date="19680412", accession="ACC1",
                               requested_by="tech")
    ok, answers = c_find(unit_clinic.receiver.port, query(), ae_title="STRANGER")
    assert not ok and answers == []
    ok, answers = c_find(unit_clinic.receiver.port, query())
    assert ok and len(answers) == 1  # the known unit, same address, is answered


def test_worklist_rows_are_sealed_at_rest(unit_clinic):
    box = unit_clinic.box
    service.schedule_screening(service.worklist_book(box), patient_id="38291047562", name="ÇELİK^AYŞE", birth_date="19680412", accession="ACC9",
                               requested_by="tech")
    raw = box.db.execute("SELECT * FROM pacs_worklist").fetchall()
    dumped = repr(raw).encode() + b"".join(v for row in raw for v in row if isinstance(v, bytes))
    for planted in ("38291047562", "ACC9", "ÇELİK", "19680412"):
        assert planted.encode() not in dumped and planted.encode("utf-8") not in dumped


@pytest.mark.parametrize(("field", "value", "says"), [
    ("name", "AYSE CELIK", r"SURNAME\^GIVEN"),
    ("birth_date", "19681312", "--birth-date"),
    ("accession", "A" * 17, "--accession"),
    ("scheduled", "2026-11-30", "--scheduled"),
])
def test_bad_entries_are_refused_with_the_fix(unit_clinic, field, value, says):
    entry = {"patient_id": "1", "name": "KAYA^ZEHRA", "birth_date": "19700101", "accession": "ACC1", "scheduled": None, field: value}
    with pytest.raises(PacsError, match=says):
        service.schedule_screening(service.worklist_book(unit_clinic.box), requested_by="tech", **entry)


def test_same_accession_twice_is_refused(unit_clinic):
    args = {"patient_id": "1", "name": "KAYA^ZEHRA", "birth_date": "19700101", "accession": "ACC1"}
    service.schedule_screening(service.worklist_book(unit_clinic.box), requested_by="tech", **args)
    with pytest.raises(PacsError, match="already on the worklist"):
        service.schedule_screening(service.worklist_book(unit_clinic.box), requested_by="tech", **args)


def test_worklist_cli_add_and_list(tmp_path):
    env = {**os.environ, "MAMMO_HOME": str(tmp_path / "home"), "MAMMO_KEYSTORE_PASSPHRASE": "pw"}

    def mammo(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)

    r = mammo("worklist", "add", "--patient-id", "38291047562", "--name", "ÇELİK^AYŞE", "--birth-date", "19680412", "--accession", "ACC5", "--json")
    assert r.returncode == 0, r.stderr
    added = json.loads(r.stdout.strip().splitlines()[-1])["entry"]
    r = mammo("worklist", "list", "--json")
    listed = json.loads(r.stdout.strip().splitlines()[-1])["entries"]
    assert [e["accession"] for e in listed] == ["ACC5"] and listed[0]["name"] == "ÇELİK^AYŞE" and listed[0]["id"] == added["id"]
    r = mammo("worklist", "add", "--patient-id", "1", "--name", "NOCARET", "--birth-date", "19680412", "--accession", "ACC6")
    assert r.returncode == 1 and "SURNAME^GIVEN" in r.stderr
