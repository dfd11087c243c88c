"""The MG generator makes valid, clearly derived Digital Mammography objects with Turkish names intact."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from edge_agent.ingest import mg
from edge_agent.ingest.autofix import MG_FOR_PRESENTATION

MIAS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mias"


def test_generated_file_is_mammography_for_presentation_and_marked_derived():
    ds = pydicom.dcmread(io.BytesIO(mg.to_bytes(mg.screening_study(mg.TURKISH_PATIENTS[0], size=64)[0])))
    assert ds.SOPClassUID == MG_FOR_PRESENTATION and ds.Modality == "MG"
    assert ds.ImageType[0] == "DERIVED" and "not a patient image" in ds.DerivationDescription
    assert ds.SpecificCharacterSet == "ISO_IR 148"
    assert str(ds.PatientName) == "ÇELİK^AYŞE"
    assert "ÇELİK^AYŞE".encode("iso8859_9") in mg.to_bytes(ds)
    assert ds.ViewCodeSequence[0].CodeValue == "399162004"


def test_ingest_accepts_a_generated_study_without_fixes(rig, study):
    results = [rig.service.ingest_bytes(mg.to_bytes(ds), source="test") for ds in study]
    assert [r.outcome for r in results] == ["accepted"] * 4
    assert {(r.laterality, r.view) for r in results} == {("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")}


@pytest.mark.shared_data
def test_mini_mias_pixels_wrap_and_the_side_is_inferred(rig):
    if not (MIAS / "images").is_dir():
        pytest.skip(f"mini-MIAS not found at {MIAS} (shared data beside the checkout)")
    for ref in ("mdb001", "mdb002"):
        pixels, side = mg.mias_pixels(MIAS, ref)
        ds = mg.mammogram(pixels, patient=mg.fake_patient(7), laterality=side, view="MLO",
                          derivation=f"mini-MIAS {ref} pixels (digitised film), wrapped by MammoAI-TR Edge; not a clinical header")
        del ds.ImageLaterality, ds.SeriesDescription
        r = rig.service.ingest_bytes(mg.to_bytes(ds), source="test")
        assert r.outcome == "fixed" and r.laterality == side, r.fixes
