"""DICOMweb read access for a radiologist's viewer on the clinic network: QIDO-RS search and WADO-RS retrieve, signed in and audited.

Routes, under ``/dicomweb`` (PS3.18):

- ``GET /dicomweb/studies[?PatientID=&StudyDate=&limit=]``: studies, as DICOM JSON;
- ``GET /dicomweb/studies/{study}/series`` and ``.../series/{series}/instances``: the study's series and instances;
- ``GET /dicomweb/studies/{study}``, ``.../series/{series}``, ``.../series/{series}/instances/{instance}``:
  the objects, ``multipart/related; type="application/dicom"``.

What a viewer gets is the care team's copy (``transform.reidentify``: her
name, ID and real dates, the box's UIDs), the same as an identified PACS
destination, because the viewer is the radiologist's. So every request must
come from a signed-in kiosk user (``authorize``, given by the kiosk: it
returns the user name or raises), and each one is written to the audit
trail with the user, the study and what was read. Searches decrypt one
header per study: sized for a clinic's box, not for an archive.

The kiosk mounts it with ``create_app(route_handlers=[..., dicomweb.router(authorize, ingest)])``.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from edge_agent import audit
from edge_agent.errors import PacsError
from edge_agent.ingest.service import IngestService
from edge_agent.pacs import transform

STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "PatientName", "PatientID", "PatientBirthDate",
              "PatientSex", "StudyDescription", "StudyID")
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription")
INSTANCE_KEYS = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns")
DEFAULT_LIMIT = 100


class Reader:
    """The box's stored studies, re-identified for the signed-in radiologist (pure of HTTP: the router calls it)."""

    def __init__(self, ingest: IngestService) -> None:
        self.ingest = ingest
        self.db = ingest.db

    def _rows(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[tuple[str, str, str, str]]:
        sql = "SELECT sop_uid, series_uid, digest, modality FROM ingest_instances WHERE study_uid = ?"
        args: list[Any] = [study_uid]
        if series_uid is not None:
            sql += " AND series_uid = ?"
            args.append(series_uid)
        if sop_uid is not None:
            sql += " AND sop_uid = ?"
            args.append(sop_uid)
        return [tuple(r) for r in self.db.execute(sql + " ORDER BY series_uid, sop_uid", args).fetchall()]

    def copy(self, study_uid: str, digest: str, *, pixels: bool = True) -> Dataset:
        """One stored instance as the care team sees it."""
        row = self.db.execute("SELECT pseudonym FROM ingest_studies WHERE study_uid = ?", [study_uid]).fetchone()
        identity = self.ingest.identity_of(row[0]) if row else None
        if identity is None:
            raise PacsError(f"Study {study_uid}: no identity on the box for it.")
        ds = pydicom.dcmread(io.BytesIO(self.ingest.store.get(digest)), stop_before_pixels=not pixels)
        return transform.reidentify(ds, identity, self.ingest.keys, accession=self.ingest.worklist.accession_of(study_uid))

    def studies(self, query: dict[str, str]) -> list[Dataset]:
        limit = int(query.get("limit") or DEFAULT_LIMIT)
        wanted = {k: v for k, v in query.items() if k in ("PatientID", "StudyDate", "StudyInstanceUID", "AccessionNumber") and v}
        out = []
        for study_uid, in self.db.execute("SELECT study_uid FROM ingest_studies ORDER BY last_seen DESC").fetchall():
            rows = self._rows(study_uid)
            if not rows:
                continue
            head = self.copy(study_uid, rows[0][2], pixels=False)
            ds = _pick(head, STUDY_KEYS)
            if any(str(ds.get(k, "")) != v for k, v in wanted.items()):
                continue
            ds.ModalitiesInStudy = sorted({r[3] for r in rows})
            ds.NumberOfStudyRelatedSeries = len({r[1] for r in rows})
            ds.NumberOfStudyRelatedInstances = len(rows)
            out.append(ds)
            if len(out) >= limit:
                break
        return out

    def series(self, study_uid: str) -> list[Dataset]:
        out = []
        by_series: dict[str, list[tuple[str, str, str, str]]] = {}
        for r in self._rows(study_uid):
            by_series.setdefault(r[1], []).append(r)
        for rows in by_series.values():
            ds = _pick(self.copy(study_uid, rows[0][2], pixels=False), SERIES_KEYS + ("StudyInstanceUID",))
            ds.NumberOfSeriesRelatedInstances = len(rows)
            out.append(ds)
        return out

    def instances(self, study_uid: str, series_uid: str) -> list[Dataset]:
        return [_pick(self.copy(study_uid, r[2], pixels=False), INSTANCE_KEYS + ("StudyInstanceUID", "SeriesInstanceUID"))
                for r in self._rows(study_uid, series_uid)]

    def files(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[bytes]:
        """The objects as DICOM files (Part 10), for WADO-RS."""
        out = []
        for r in self._rows(study_uid, series_uid, sop_uid):
            buf = io.BytesIO()
            self.copy(study_uid, r[2]).save_as(buf, enforce_file_format=True)
            out.append(buf.getvalue())
        return out


def _pick(ds: Dataset, keys: Iterable[str]) -> Dataset:
    out = Dataset()
    if "SpecificCharacterSet" in ds:
        out.SpecificCharacterSet = ds.SpecificCharacterSet
    for k in keys:
        if k in ds:
            out[k] = ds[k]
    return out


def dicom_json(datasets: list[Dataset]) -> list[dict[str, Any]]:
    return [ds.to_json_dict() for ds in datasets]


def multipart(parts: list[bytes]) -> tuple[bytes, str]:
    """A multipart/related body of DICOM files and its content type (PS3.18 8.6.1.2)."""
    boundary = secrets.token_hex(16)
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts)
    return body + b"--" + boundary.encode() + b"--\r\n", f'multipart/related; type="application/dicom"; boundary={boundary}'


def router(authorize: Callable[[Any], str], ingest: IngestService) -> Any:
    """The Litestar router; ``authorize(request)`` returns the signed-in user's name or raises the kiosk's 401/403."""
    from litestar import Request, Response, Router, get
    from litestar.exceptions import NotFoundException
    from litestar.params import FromPath

    reader = Reader(ingest)

    def _audit(user: str, action: str, study_uid: str | None, details: dict[str, Any]) -> None:
        audit.append(ingest.db, user, action, study_uid, details)

    def _json(data: list[dict[str, Any]]) -> Response[bytes]:
        import json

        return Response(json.dumps(data).encode(), media_type="application/dicom+json", headers={"Cache-Control": "no-store"})

    def _known(study: FromPath[str]) -> None:
        if ingest.db.execute("SELECT 1 FROM ingest_studies WHERE study_uid = ?", [study]).fetchone() is None:
            raise NotFoundException(f"No study {study[:64]} on this box.")

    @get("/studies", sync_to_thread=True)
    def search_studies(request: Request[Any, Any, Any]) -> Response[bytes]:
        user = authorize(request)
        query = {k: str(v) for k, v in request.query_params.items()}
        found = reader.studies(query)
        _audit(user, "dicomweb_search", None, {"query": sorted(query), "studies": len(found)})
        return _json(dicom_json(found))

    @get("/studies/{study:str}/series", sync_to_thread=True)
    def search_series(request: Request[Any, Any, Any], study: FromPath[str]) -> Response[bytes]:
        user = authorize(request)
        _known(study)
        _audit(user, "dicomweb_search", study, {"level": "series"})
        return _json(dicom_json(reader.series(study)))

    @get("/studies/{study:str}/series/{series:str}/instances", sync_to_thread=True)
    def search_instances(request: Request[Any, Any, Any], study: FromPath[str], series: FromPath[str]) -> Response[bytes]:
        user = authorize(request)
        _known(study)
        _audit(user, "dicomweb_search", study, {"level": "instances", "series": series})
        return _json(dicom_json(reader.instances(study, series)))

    def _retrieve(request: Request[Any, Any, Any], study: str, series: str | None = None, instance: str | None = None) -> Response[bytes]:
        user = authorize(request)
        _known(study)
        parts = reader.files(study, series, instance)
        if not parts:
            raise NotFoundException("No such series or instance in this study.")
        _audit(user, "dicomweb_retrieve", study, {"series": series, "instance": instance, "objects": len(parts)})
        body, media_type = multipart(parts)
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-store"})

    @get("/studies/{study:str}", sync_to_thread=True)
    def retrieve_study(request: Request[Any, Any, Any], study: FromPath[str]) -> Response[bytes]:
        return _retrieve(request, study)

    @get("/studies/{study:str}/series/{series:str}", sync_to_thread=True)
    def retrieve_series(request: Request[Any, Any, Any], study: FromPath[str], series: FromPath[str]) -> Response[bytes]:
        return _retrieve(request, study, series)

    @get("/studies/{study:str}/series/{series:str}/instances/{instance:str}", sync_to_thread=True)
    def retrieve_instance(request: Request[Any, Any, Any], study: FromPath[str], series: FromPath[str], instance: FromPath[str]) -> Response[bytes]:
        return _retrieve(request, study, series, instance)

    return Router(path="/dicomweb", route_handlers=[search_studies, search_series, search_instances, retrieve_study, retrieve_series,
                                                   retrieve_instance],
                  signature_namespace={"Request": Request, "Response": Response, "Any": Any, "FromPath": FromPath})  # litestar is imported here, not at the top
