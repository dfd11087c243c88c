"""DICOMweb for the radiologist's viewer: QIDO-RS and WADO-RS behind the kiosk's real sign-in, every read audited."""

from __future__ import annotations

import io
import re

import pydicom
import pytest
from litestar import Litestar
from litestar.exceptions import NotAuthorizedException
from litestar.testing import TestClient

from edge_agent.errors import AuthError
from edge_agent.ingest import mg
from edge_agent.pacs import dicomweb
from kiosk_ui.services import KioskServices

COOKIE = "kiosk_session"


@pytest.fixture
def viewer(clinic_factory):
    clinic = clinic_factory()
    services = KioskServices(clinic.box.settings, clinic.ingest.db, clinic.ingest)
    services.add_user("dr.radyolog", "a long enough passphrase 1", "radiologist")
    token, _ = services.sign_in("dr.radyolog", "a long enough passphrase 1")

    def authorize(request) -> str:
        try:
            return services.session(request.cookies.get(COOKIE)).user.username
        except AuthError:
            raise NotAuthorizedException("Sign in to the kiosk first.") from None

    app = Litestar(route_handlers=[dicomweb.router(authorize, clinic.ingest)])
    with TestClient(app) as client:
        yield clinic, client, token


def parts_of(response) -> list[pydicom.Dataset]:
    boundary = re.search(r"boundary=([0-9a-f]+)", response.headers["content-type"]).group(1).encode()
    chunks = response.content.split(b"--" + boundary)[1:-1]
    return [pydicom.dcmread(io.BytesIO(c.split(b"\r\n\r\n", 1)[1][:-2])) for c in chunks]


def test_signed_in_viewer_searches_and_retrieves_the_care_team_copy(viewer):
    clinic, client, token = viewer
    patient = mg.TURKISH_PATIENTS[2]
    results = clinic.push_study(21, patient=patient)
    study_uid = results[0].study_uid
    client.cookies.set(COOKIE, token)

    r = client.get("/dicomweb/studies")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/dicom+json")
    [study] = [pydicom.Dataset.from_json(d) for d in r.json()]
    assert study.StudyInstanceUID == study_uid and study.PatientID == patient.patient_id and study.StudyDate == "20260315"
    assert study.NumberOfStudyRelatedInstances == 4 and study.ModalitiesInStudy == "MG"
    assert client.get("/dicomweb/studies", params={"PatientID": "nobody"}).json() == []

    series = client.get(f"/dicomweb/studies/{study_uid}/series").json()
    assert len(series) == 4
    one = pydicom.Dataset.from_json(series[0])
    instances = [pydicom.Dataset.from_json(d) for d in client.get(f"/dicomweb/studies/{study_uid}/series/{one.SeriesInstanceUID}/instances").json()]
    assert len(instances) == 1 and instances[0].SOPInstanceUID in {x.sop_instance_uid for x in results}

    r = client.get(f"/dicomweb/studies/{study_uid}")
    assert r.status_code == 200 and r.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    files = parts_of(r)
    assert len(files) == 4 and all(str(f.PatientName) == patient.name and f.PixelData for f in files)
    r = client.get(f"/dicomweb/studies/{study_uid}/series/{one.SeriesInstanceUID}/instances/{instances[0].SOPInstanceUID}")
    assert [f.SOPInstanceUID for f in parts_of(r)] == [instances[0].SOPInstanceUID]

    trail = clinic.box.db.execute("SELECT actor, action, object FROM audit_log WHERE action LIKE 'dicomweb_%' ORDER BY seq").fetchall()
    assert [a for _, a, _ in trail] == ["dicomweb_search"] * 4 + ["dicomweb_retrieve"] * 2
    assert {actor for actor, _, _ in trail} == {"dr.radyolog"} and trail[-1][2] == study_uid


def test_without_sign_in_nothing_is_answered(viewer):
    clinic, client, _ = viewer
    study_uid = clinic.push_study(22)[0].study_uid
    for path in ("/dicomweb/studies", f"/dicomweb/studies/{study_uid}", f"/dicomweb/studies/{study_uid}/series"):
        r = client.get(path)
        assert r.status_code == 401 and b"MAMMO" not in r.content
    client.cookies.set(COOKIE, "forged")
    assert client.get("/dicomweb/studies").status_code == 401
    assert clinic.box.db.execute("SELECT count(*) FROM audit_log WHERE action LIKE 'dicomweb_%'").fetchone()[0] == 0


def test_unknown_study_is_404(viewer):
    _, client, token = viewer
    client.cookies.set(COOKIE, token)
    assert client.get("/dicomweb/studies/1.2.3").status_code == 404
