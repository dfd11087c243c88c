"""View and laterality from what real files carry: tags, CID 4014 codes, descriptions (Turkish too), and the pixels last."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from edge_agent.ingest import autofix, mg
from edge_agent.ingest.views import VIEW_TABLE, Coded, Evidence, read_text, read_views, view_of_code, view_term


@pytest.mark.parametrize(("text", "expected"), [
    ("LEFT_CC", ("L", "CC")),
    ("R MLO", ("R", "MLO")),
    ("RCC", ("R", "CC")),
    ("L-MLO", ("L", "MLO")),
    ("LMLO", ("L", "MLO")),
    ("rmlo", ("R", "MLO")),
    ("Sol MLO", ("L", "MLO")),
    ("SAĞ CC", ("R", "CC")),
    ("sağ kraniokaudal", ("R", "CC")),
    ("SOL MEME KRANİYOKAUDAL", ("L", "CC")),
    ("Sağ mediolateral oblik", ("R", "MLO")),
    ("Right medio-lateral oblique", ("R", "MLO")),
    ("L Cranio-Caudal", ("L", "CC")),
    ("R OBL", ("R", "MLO")),
    ("RXCCL", ("R", "XCCL")),
    ("L XCCM", ("L", "XCCM")),
    ("L LM", ("L", "LM")),
    ("RML", ("R", "ML")),
    ("R latero-medial", ("R", "LM")),
    ("LCCID", ("L", "CC")),
    ("R MLO ID", ("R", "MLO")),
    ("cranio-caudal exaggerated laterally", ("", "XCCL")),
    ("caudo-cranial (from below)", ("", "FB")),
    ("axillary tail", ("", "AT")),
    ("BILATERAL CC", ("", "CC")),  # two sides named: no side
    ("L CC + L MLO", ("L", "")),  # two views named: no view
    ("LCC RCC", ("", "CC")),
    ("MAMOGRAFİ TARAMA", ("", "")),
    ("Screening at 9:30", ("", "")),  # 'at' is not the axillary-tail view
    ("", ("", "")),
])
def test_descriptions_name_side_and_view(text, expected):
    assert read_text(text) == expected


def test_view_table_matches_dicom_cid_4014_in_both_snomed_editions():
    current = {code.value: code for code in (getattr(codes.cid4014, name) for name in codes.cid4014.dir())}
    table = {sct: (view, srt) for view, sct, srt, _ in VIEW_TABLE}
    for sct in current:  # every code of today's CID 4014 is known
        view, srt = table[sct]
        assert view_of_code("SCT", sct) == view and view_of_code("SRT", srt) == view
        assert Code(srt, "SRT", "x") == Code(sct, "SCT", "x")  # pydicom's own SNOMED-RT -> SNOMED CT mapping agrees


@pytest.mark.parametrize(("scheme", "value", "view"), [
    ("SCT", "399162004", "CC"), ("SCT", "399368009", "MLO"), ("SRT", "R-10242", "CC"), ("SNM3", "R-10226", "MLO"),
    ("SCT", "399192008", "XCCL"), ("SCT", "399101009", "XCCM"), ("SRT", "R-1024A", "XCCL"),
    ("SCT", "399099002", "LMO"),  # was read as XCCL before
    ("", "399260004", "ML"), ("99VENDOR", "399162004", ""), ("SCT", "12345", ""),
])
def test_view_codes(scheme, value, view):
    assert view_of_code(scheme, value) == view


@pytest.mark.parametrize(("value", "view"), [("CC", "CC"), ("mlo", "MLO"), ("XCCL", "XCCL"), ("CCID", "CC"), ("RCC", ""), ("", ""), ("AP", "")])
def test_view_position_terms(value, view):
    assert view_term(value) == view


def test_sources_are_read_in_the_documented_order_and_disagreement_is_reported():
    ev = Evidence(
        view_position="", view_codes=(Coded("SCT", "399368009", "medio-lateral oblique"),),
        image_laterality="", series_laterality="R", texts=(("SeriesDescription", "L CC"), ("ProtocolName", "R MLO")),
    )
    r = read_views(ev)
    assert (r.laterality.value, r.laterality.source) == ("R", "Laterality (0020,0060)")
    assert (r.view.value, r.view.source) == ("MLO", "ViewCodeSequence (SCT 399368009)")
    assert [(d.value, d.source) for d in r.laterality_disagrees] == [("L", "SeriesDescription")]
    assert [(d.value, d.source) for d in r.view_disagrees] == [("CC", "SeriesDescription")]


def test_explicit_tags_win_and_unknown_codes_fall_back_to_their_meaning():
    r = read_views(Evidence(view_position="CC", view_codes=(Coded("SCT", "399162004"),), image_laterality="L", texts=(("SeriesDescription", "LCC"),)))
    assert (r.laterality.source, r.view.source, r.laterality_disagrees, r.view_disagrees) == ("ImageLaterality", "ViewPosition", (), ())
    r = read_views(Evidence(view_codes=(Coded("99VENDOR", "V1", "Kraniokaudal"),), image_laterality="U",
                            region_codes=(Coded("SCT", "80248007", "Left breast"),)))
    assert (r.view.value, r.view.source) == ("CC", "ViewCodeSequence (its code meaning)")
    assert (r.laterality.value, r.laterality.source) == ("L", "AnatomicRegionSequence (SCT 80248007)")  # U is no side for a breast


def test_view_position_holding_side_and_view_is_read_as_text():
    r = read_views(Evidence(view_position="R-MLO"))
    assert (r.laterality.value, r.view.value, r.view.source) == ("R", "MLO", "ViewPosition")


# -- real DICOM files through the ingest service -------------------------------------------------

def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _bare(lat: str, view: str, study_uid: str, n: int) -> Dataset:
    """A mammogram that says nothing about its side or view; each test adds back one way of saying it."""
    ds = mg.mammogram(mg.synthetic_pixels(40 + n, lat, 128), patient=mg.TURKISH_PATIENTS[1], laterality=lat, view=view,
                      study_uid=study_uid, instance_number=n)
    for kw in ("ViewPosition", "ImageLaterality", "ViewCodeSequence", "SeriesDescription"):
        del ds[kw]
    return ds


def _fix_messages(result) -> dict[str, str]:
    return {f.code: f.message for f in result.fixes}


def test_a_study_whose_four_files_each_say_their_view_another_way_completes_on_the_fourth(rig):
    uid = "1.2.826.0.1.3680043.8.498.41"
    l_cc = _bare("L", "CC", uid, 1)
    l_cc.ViewCodeSequence = [_code("399162004", "SCT", "cranio-caudal")]
    l_cc.Laterality = "L"
    l_mlo = _bare("L", "MLO", uid, 2)
    l_mlo.SeriesDescription = "L-MLO"
    r_cc = _bare("R", "CC", uid, 3)
    r_cc.ViewCodeSequence = [_code("R-10242", "SRT", "cranio-caudal")]
    region = _code("73056007", "SCT", "Right breast")
    r_cc.AnatomicRegionSequence = [region]
    r_mlo = _bare("R", "MLO", uid, 4)
    r_mlo.ImageComments = "Sağ mediolateral oblik"  # encoded in ISO_IR 148 (Turkish) in the file
    results = [rig.service.ingest_bytes(mg.to_bytes(ds), source="test") for ds in (l_cc, l_mlo, r_cc, r_mlo)]

    assert [(r.outcome, r.laterality, r.view) for r in results] == [
        ("fixed", "L", "CC"), ("fixed", "L", "MLO"), ("fixed", "R", "CC"), ("fixed", "R", "MLO")]
    assert _fix_messages(results[0])["view_inferred"] == "ViewPosition=CC from ViewCodeSequence (SCT 399162004); the tag was missing."
    assert _fix_messages(results[0])["laterality_inferred"] == "ImageLaterality=L from Laterality (0020,0060); the tag was missing."
    assert _fix_messages(results[1])["view_inferred"].startswith("ViewPosition=MLO from SeriesDescription")
    assert _fix_messages(results[2])["view_inferred"].startswith("ViewPosition=CC from ViewCodeSequence (SRT R-10242)")
    assert _fix_messages(results[2])["laterality_inferred"].startswith("ImageLaterality=R from AnatomicRegionSequence (SCT 73056007)")
    assert _fix_messages(results[3])["view_inferred"].startswith("ViewPosition=MLO from ImageComments")
    assert [r.infer_job_id is None for r in results] == [True, True, True, False]
    jobs = rig.infer_jobs()
    assert len(jobs) == 1
    payload = json.loads(jobs[0][2])
    assert sorted(payload["views"]) == ["L-CC", "L-MLO", "R-CC", "R-MLO"] and payload["complete_reason"] == "four_views"
    stored = rig.db.execute("SELECT laterality, view FROM ingest_instances ORDER BY laterality, view").fetchall()
    assert [tuple(r) for r in stored] == [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]


def test_side_from_the_pixels_when_no_tag_code_or_text_names_it(rig):
    ds = _bare("R", "CC", "1.2.826.0.1.3680043.8.498.42", 1)
    ds.ViewCodeSequence = [_code("399162004", "SCT", "cranio-caudal")]
    result = rig.service.ingest_bytes(mg.to_bytes(ds), source="test")
    assert (result.laterality, result.view) == ("R", "CC")
    assert "from the image" in _fix_messages(result)["laterality_inferred"]


def test_a_supplementary_view_does_not_stand_in_for_a_screening_view(rig):
    uid = "1.2.826.0.1.3680043.8.498.43"
    files = []
    for n, (lat, view) in enumerate((("R", "CC"), ("R", "MLO"), ("L", "MLO")), start=1):
        files.append(mg.mammogram(mg.synthetic_pixels(n, lat, 128), patient=mg.TURKISH_PATIENTS[1], laterality=lat, view=view, study_uid=uid, instance_number=n))
    xccl = _bare("L", "CC", uid, 4)
    xccl.ViewCodeSequence = [_code("399192008", "SCT", "cranio-caudal exaggerated laterally")]
    xccl.ImageLaterality = "L"
    files.append(xccl)
    results = [rig.service.ingest_bytes(mg.to_bytes(ds), source="test") for ds in files]
    assert results[-1].view == "XCCL" and rig.infer_jobs() == []  # XCCL is taken with the CC, not instead of it
    l_cc = mg.mammogram(mg.synthetic_pixels(5, "L", 128), patient=mg.TURKISH_PATIENTS[1], laterality="L", view="CC", study_uid=uid, instance_number=5)
    assert rig.service.ingest_bytes(mg.to_bytes(l_cc), source="test").infer_job_id is not None
    assert len(json.loads(rig.infer_jobs()[0][2])["views"]) == 5


def test_a_disagreeing_description_is_reported_and_the_tag_kept(rig):
    ds = mg.mammogram(mg.synthetic_pixels(3, "L", 128), patient=mg.TURKISH_PATIENTS[1], laterality="L", view="CC")
    ds.SeriesDescription = "R CC"
    result = rig.service.ingest_bytes(mg.to_bytes(ds), source="test")
    assert (result.laterality, result.view) == ("L", "CC")
    assert "but SeriesDescription says R" in _fix_messages(result)["laterality_conflict"]


# -- a mammography SOP class sent with another Modality ----------------------------------------------

def test_mg_sop_class_sent_as_us_is_stored_as_mg_and_triaged(rig, study):
    study[2].Modality = "US"
    results = [rig.service.ingest_bytes(mg.to_bytes(ds), source="test") for ds in study]
    assert results[2].modality == "MG" and results[2].notes == ()
    assert _fix_messages(results[2])["modality_mg"] == (
        "Modality US contradicts the mammography SOP class (Digital Mammography X-Ray Image Storage - For Presentation); set to MG.")
    assert results[3].infer_job_id is not None and len(rig.infer_jobs()) == 1
    assert rig.db.execute("SELECT COUNT(*) FROM ingest_instances WHERE modality = 'MG'").fetchone()[0] == 4


def test_colour_pixels_under_an_mg_sop_class_with_us_modality_are_quarantined(rig):
    ds = mg.mammogram(mg.synthetic_pixels(3, "L", 64), patient=mg.TURKISH_PATIENTS[1], laterality="L", view="CC")
    ds.Modality = "US"
    ds.set_pixel_data(np.zeros((64, 64, 3), dtype=np.uint8), "RGB", 8)
    result = rig.service.ingest_bytes(mg.to_bytes(ds), source="test")
    assert (result.outcome, result.reason_code) == ("quarantined", "modality_contradicts_sop_class")
    assert rig.db.execute("SELECT COUNT(*) FROM ingest_instances").fetchone()[0] == 0


def test_a_us_sop_class_stays_us():
    ds = mg.mammogram(mg.synthetic_pixels(3, "L", 64), patient=mg.TURKISH_PATIENTS[1], laterality="L", view="CC")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
    ds.Modality = "US"
    assert autofix.fix_sop_class(ds) == [] and ds.Modality == "US"
