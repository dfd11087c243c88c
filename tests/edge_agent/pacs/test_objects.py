"""The AI objects the PACS gets: the SR and the heatmap captures, written to bytes, read back and checked against their IODs.

dicom-validator cannot run here (it downloads the standard's DocBook files and
the box is offline), so validity is checked three ways: highdicom's own
checks while building, a round trip through pydicom and highdicom's parsers,
and the Type 1/2 attributes of each IOD's mandatory modules (``iod``).
"""

from __future__ import annotations

import io
import threading

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from edge_agent.inference.worker import result_of
from edge_agent.pacs import iod, service
from edge_agent.pacs.export import ExportHandler
from edge_agent.pacs.sr import MODEL_NAME, TRIAGE, TRIAGE_VALUES


def _texts(ds: Dataset):
    """Every TEXT content item's value, however deep (the algorithm identification sits in each group)."""
    for item in ds.get("ContentSequence", []):
        if "TextValue" in item:
            yield str(item.TextValue)
        yield from _texts(item)


def roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.fixture
def exported(clinic_factory):
    """A triaged study and this destination's objects for it, as the export builds them (nothing sent)."""
    clinic = clinic_factory(pacs_destinations="HOSP_PACS@127.0.0.1:104/identified")
    results = clinic.push_study(7)
    clinic.triage()
    study_uid = results[0].study_uid
    worker, handler = service.make_worker(clinic.box, threading.Event())
    assert isinstance(handler, ExportHandler)
    dest = handler.destination("HOSP_PACS@127.0.0.1:104")
    objects = list(handler.objects(dest, study_uid, handler._study(study_uid)))
    worker.queue.db.conn.close()
    return clinic, study_uid, objects


def test_sr_round_trips_and_carries_result_locations_and_algorithm(exported):
    clinic, study_uid, objects = exported
    [sr_out] = [o.dataset for o in objects if o.kind == "sr"]
    images = [o.dataset for o in objects if o.kind == "image"]
    back = roundtrip(sr_out)
    assert iod.problems(back) == []
    assert back.Modality == "SR" and back.CompletionFlag == "COMPLETE" and back.VerificationFlag == "UNVERIFIED"
    assert back.StudyInstanceUID == study_uid and back.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in images}
    report = hd.sr.ComprehensiveSR.from_dataset(back)
    result = result_of(clinic.box.db, study_uid)
    manifest = clinic.box.db.execute("SELECT manifest_sha256 FROM model_activations ORDER BY id DESC LIMIT 1").fetchone()[0]

    content = report.content
    [study_group, *breast_groups] = content.get_image_measurement_groups()
    assert len(breast_groups) == 2
    triage_item = study_group.get_qualitative_evaluations(name=TRIAGE)[0]
    assert triage_item.value == TRIAGE_VALUES[result["triage"]]
    assert study_group.get_measurements()[0].value == pytest.approx(result["study_score"], abs=1e-6)
    text = set(_texts(back))
    assert {MODEL_NAME, result["model_version"], f"manifest_sha256={manifest}"} <= text
    assert MODEL_NAME in text and result["model_version"] in text and f"manifest_sha256={manifest}" in text
    sides = {g.finding_sites[0].laterality.meaning: g.get_measurements()[0].value for g in breast_groups}
    assert sides == pytest.approx({"Right": result["breast_scores"]["R"]["suspicion"], "Left": result["breast_scores"]["L"]["suspicion"]},
                                  abs=1e-6)

    rois = content.get_planar_roi_measurement_groups()
    assert len(rois) == 4
    scores = [g.get_measurements()[0].value for g in rois]
    assert scores == sorted(scores, reverse=True)  # most suspicious first
    by_uid = {ds.SOPInstanceUID: ds for ds in images}
    views = {v["sop_uid"]: v for v in result["views"]}
    for g in rois:
        region = g.roi
        ref = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID  # SELECTED FROM: the image
        assert ref in by_uid  # the point sits on one of the images the PACS gets
        assert region.GraphicType == "POINT"
        [[x, y]] = region.value
        assert (x - 0.5, y - 0.5) == (views[ref]["peak_x"], views[ref]["peak_y"])
    evidence = {sop.ReferencedSOPInstanceUID for s in back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
                for sop in s.ReferencedSOPSequence}
    assert evidence == set(by_uid)


def test_heatmap_captures_are_labelled_ai_output_in_their_own_series(exported):
    clinic, study_uid, objects = exported
    images = {o.dataset.SOPInstanceUID: o.dataset for o in objects if o.kind == "image"}
    captures = [roundtrip(o.dataset) for o in objects if o.kind == "heatmap"]
    assert len(captures) == 4 and len({c.SeriesInstanceUID for c in captures}) == 1
    result = result_of(clinic.box.db, study_uid)
    views = {v["sop_uid"]: v for v in result["views"]}
    for sc in captures:
        assert iod.problems(sc) == []
        assert hd.Image.from_dataset(sc).number_of_frames == 1  # highdicom reads it back as an image
        assert sc.SOPClassUID == iod.SECONDARY_CAPTURE and sc.PhotometricInterpretation == "RGB"
        assert "not for diagnosis" in sc.SeriesDescription and sc.ImageComments.startswith("AI OUTPUT")
        source = sc.SourceImageSequence[0].ReferencedSOPInstanceUID
        assert source in images and sc.StudyInstanceUID == study_uid and sc.PatientID == images[source].PatientID
        assert sc.Laterality == images[source].ImageLaterality  # the viewer hangs it beside its breast
        rgb = sc.pixel_array.astype(int)
        v = views[source]
        heat = np.asarray(Image.open(io.BytesIO(clinic.ingest.store.get(v["heatmap_digest"])))) / 255.0
        assert rgb.shape[:2] == heat.shape  # at the heatmap's own size
        hot, cold = heat > 0.3, heat < 0.1
        if hot.any():  # drawn warm where the model looked hardest ...
            assert (rgb[hot][:, 0] > rgb[hot][:, 2]).all()
        assert (rgb[cold][:, 0] == rgb[cold][:, 2]).all()  # ... and the grey view shows through where it saw nothing


def test_objects_keep_their_uids_when_built_again(exported):
    clinic, study_uid, objects = exported
    worker, handler = service.make_worker(clinic.box, threading.Event())
    dest = handler.destination("HOSP_PACS@127.0.0.1:104")
    again = list(handler.objects(dest, study_uid, handler._study(study_uid)))
    worker.queue.db.conn.close()
    assert [o.dataset.SOPInstanceUID for o in again] == [o.dataset.SOPInstanceUID for o in objects]


def test_iod_check_names_what_is_missing():
    ds = Dataset()
    ds.SOPClassUID = iod.COMPREHENSIVE_SR
    ds.SOPInstanceUID = "1.2.3"
    ds.Modality = "SR"
    found = iod.problems(ds)
    assert "General Study: StudyInstanceUID (Type 1) missing or empty" in found
    assert "Patient: PatientName (Type 2) missing" in found
    assert "SOP Common: SOPClassUID (Type 1) missing or empty" not in found


def test_colour_scale_matches_the_kiosk_overlay():
    from edge_agent.pacs.capture import blend, colour

    low, high = colour(np.array([0.05])), colour(np.array([0.95]))
    assert high[0, 1] < low[0, 1] and high[0, 0] == 1.0  # hotter is redder (less yellow)
    grey = np.full((2, 2), 100, np.uint8)
    assert (blend(grey, np.full((2, 2), 0.1)) == 100).all()  # below 0.15: the view shows through unchanged
    assert blend(grey, np.ones((2, 2)))[0, 0, 0] > 200


def test_research_copies_name_no_box_uid_anywhere(clinic_factory):
    clinic = clinic_factory(pacs_destinations="RESEARCH@127.0.0.1:104/deidentified")
    results = clinic.push_study(14)
    clinic.triage()
    worker, handler = service.make_worker(clinic.box, threading.Event())
    dest = handler.destination("RESEARCH@127.0.0.1:104")
    objects = list(handler.objects(dest, results[0].study_uid, handler._study(results[0].study_uid)))
    worker.queue.db.conn.close()
    box_uids = {r.sop_instance_uid for r in results} | {results[0].study_uid}
    for o in objects:
        for text in (str(o.dataset), str(roundtrip(o.dataset))):
            assert not any(uid in text for uid in box_uids)  # header, meta and SR references alike, as sent and as written
