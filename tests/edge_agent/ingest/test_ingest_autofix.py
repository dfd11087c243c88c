"""Auto-fix rules: each repair happens, is stable, and is recorded for the technician."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from edge_agent.ingest import autofix, mg
from edge_agent.ingest.reader import ReadLimits, read, valid_uid


def _mg(lat: str = "L", view: str = "CC") -> Dataset:
    return mg.mammogram(mg.fallback_pixels(0, lat, 64), patient=mg.TURKISH_PATIENTS[0], laterality=lat, view=view)


def _codes(fixes) -> set[str]:
    return {f.code for f in fixes}


def test_the_file_is_hashed_only_to_seed_a_missing_sop_instance_uid():
    """Hashing a detector image costs ~25 ms: the digest is asked for only when the UID it seeds is missing."""
    asked: list[int] = []

    def digest() -> str:
        asked.append(1)
        return "digest-2"

    complete = _mg()
    assert autofix.fix_uids(complete, digest) == [] and asked == []
    missing = _mg()
    del missing.SOPInstanceUID
    assert _codes(autofix.fix_uids(missing, digest)) == {"uid_missing"} and asked == [1]
    assert missing.SOPInstanceUID == autofix.derived_uid("missing", "SOPInstanceUID", "digest-2")


def test_missing_and_invalid_uids_get_stable_replacements():
    a, b = _mg(), _mg()
    for ds in (a, b):
        del ds.SOPInstanceUID
        with pytest.warns(UserWarning, match="Invalid value for VR UI"):
            ds.SeriesInstanceUID = "1.2.03.x"  # as a broken modality would send it
    fa = autofix.fix_uids(a, "digest-1")
    assert autofix.fix_uids(b, "digest-1") == fa
    assert _codes(fa) == {"uid_missing", "uid_invalid"}
    assert valid_uid(a.SOPInstanceUID) and valid_uid(a.SeriesInstanceUID)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)  # a re-send maps the same


def test_mg_modality_with_wrong_sop_class_becomes_mammography():
    ds = _mg()
    ds.SOPClassUID = autofix.SECONDARY_CAPTURE
    fixes = autofix.fix_sop_class(ds)
    assert ds.SOPClassUID == autofix.MG_FOR_PRESENTATION and _codes(fixes) == {"sop_class_mg"}
    ds.PresentationIntentType = "FOR PROCESSING"
    del ds.SOPClassUID
    del ds.file_meta.MediaStorageSOPClassUID
    autofix.fix_sop_class(ds)
    assert ds.SOPClassUID == autofix.MG_FOR_PROCESSING


def test_missing_photometric_interpretation_is_set_from_samples():
    ds = _mg()
    del ds.PhotometricInterpretation
    assert _codes(autofix.fix_photometric(ds)) == {"photometric_missing"}
    assert ds.PhotometricInterpretation == "MONOCHROME2"


def test_monochrome1_is_left_as_sent_by_every_rule():
    ds = _mg()
    ds.PhotometricInterpretation = "MONOCHROME1"
    pixels = ds.pixel_array.copy()
    before = (bytes(ds.PixelData), ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID)
    fixes = autofix.apply_all(ds, pixels, "digest")
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "monochrome1_inverted" not in _codes(fixes)
    assert (bytes(ds.PixelData), ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID) == before


def test_side_of_a_monochrome1_image_is_read_with_its_polarity():
    for side in ("L", "R"):
        ds = _mg(side)
        del ds.ImageLaterality, ds.SeriesDescription
        ds.PhotometricInterpretation = "MONOCHROME1"
        as_sent = 255 - ds.pixel_array  # dense tissue stored dark
        fixes = autofix.fix_mammo_view(ds, as_sent)
        assert ds.ImageLaterality == side, fixes
        assert autofix.side_from_pixels(as_sent)[0] != side  # read as MONOCHROME2 it would be the other breast


def test_laterality_and_view_from_series_description():
    ds = _mg("R", "MLO")
    del ds.ImageLaterality, ds.ViewPosition, ds.ViewCodeSequence
    ds.SeriesDescription = "RMLO"
    fixes = autofix.fix_mammo_view(ds, None)
    assert (ds.ImageLaterality, ds.ViewPosition) == ("R", "MLO")
    assert _codes(fixes) == {"laterality_inferred", "view_inferred"}


def test_view_from_view_code_sequence():
    ds = _mg("L", "MLO")
    del ds.ViewPosition, ds.SeriesDescription
    autofix.fix_mammo_view(ds, None)
    assert ds.ViewPosition == "MLO"


def test_laterality_from_the_image_side():
    for side in ("L", "R"):
        ds = _mg(side)
        del ds.ImageLaterality, ds.SeriesDescription
        fixes = autofix.fix_mammo_view(ds, ds.pixel_array)
        assert ds.ImageLaterality == side
        assert "from the image" in next(f.message for f in fixes if f.code == "laterality_inferred")


def test_synthetic_generator_pixels_give_the_right_side():
    for side in ("L", "R"):
        assert autofix.side_from_pixels(mg.synthetic_pixels(7, side, 128))[0] == side


def test_undecidable_view_is_reported_not_guessed():
    ds = _mg()
    del ds.ViewPosition, ds.ViewCodeSequence, ds.SeriesDescription
    assert "view_unknown" in _codes(autofix.fix_mammo_view(ds, None))
    assert "ViewPosition" not in ds


def test_many_repeated_fixes_collapse_to_one_line():
    fixes = [autofix.Fix("vr_un_resolved", "x", str(i)) for i in range(40)]
    out = autofix.summarise(fixes)
    assert len(out) == 1 and out[0].message.startswith("40 elements")


def test_invalid_number_of_frames_is_recomputed():
    path = get_testdata_file("badVR.dcm", download=False)
    decoded = read(Path(path).read_bytes(), ReadLimits())
    assert "frames_invalid" in _codes(decoded.fixes)
    assert int(decoded.ds.NumberOfFrames) * 400 == len(decoded.ds.PixelData)
