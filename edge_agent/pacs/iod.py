"""The IOD modules the box's own objects must carry, checked before one leaves the box.

highdicom checks the SR content tree and the Secondary Capture attributes
while it builds them; this is the second check, on the finished dataset,
against the mandatory modules of the two IODs (PS3.3 A.35.3 Comprehensive
SR, A.8.1 Secondary Capture Image): every Type 1 attribute present and not
empty, every Type 2 attribute present. A DICOM validator working from the
standard's own tables (``dicom-validator``) needs the standard's DocBook
files, which it downloads; the box is offline, so these tables are written
out here for the attributes that matter, and the tests run both checks.

Pure: a dataset in, a list of problems out.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

# module -> (type 1 keywords, type 2 keywords)
_PATIENT = ((), ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"))
_STUDY = (("StudyInstanceUID",), ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"))
_SOP = (("SOPClassUID", "SOPInstanceUID"), ())
_EQUIPMENT = ((), ("Manufacturer",))
MODULES: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    COMPREHENSIVE_SR: {
        "Patient": _PATIENT,
        "General Study": _STUDY,
        "SR Document Series": (("Modality", "SeriesInstanceUID", "SeriesNumber"), ("ReferencedPerformedProcedureStepSequence",)),
        "General Equipment": _EQUIPMENT,
        "SR Document General": (("InstanceNumber", "CompletionFlag", "VerificationFlag", "ContentDate", "ContentTime"),
                                ("PerformedProcedureCodeSequence",)),
        "SR Document Content": (("ValueType", "ConceptNameCodeSequence", "ContinuityOfContent", "ContentSequence"), ()),
        "SOP Common": _SOP,
    },
    SECONDARY_CAPTURE: {
        "Patient": _PATIENT,
        "General Study": _STUDY,
        "General Series": (("Modality", "SeriesInstanceUID"), ("SeriesNumber",)),
        "General Equipment": _EQUIPMENT,
        "SC Equipment": (("ConversionType",), ()),
        "General Image": ((), ("InstanceNumber", "PatientOrientation")),
        "Image Pixel": (("SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
                         "HighBit", "PixelRepresentation", "PixelData"), ()),
        "SOP Common": _SOP,
    },
}


def problems(ds: Dataset) -> list[str]:
    """What the dataset lacks for its IOD ([] when complete); an SOP class not listed here is a problem too."""
    modules = MODULES.get(str(ds.get("SOPClassUID", "")))
    if modules is None:
        return [f"SOP class {ds.get('SOPClassUID', '(none)')} is not one the box makes"]
    out = []
    for module, (type1, type2) in modules.items():
        for kw in type1:
            if kw not in ds or ds[kw].value in (None, "", b"") or (ds[kw].VR == "SQ" and not ds[kw].value):
                out.append(f"{module}: {kw} (Type 1) missing or empty")
        out.extend(f"{module}: {kw} (Type 2) missing" for kw in type2 if kw not in ds)
    if str(ds.SOPClassUID) == SECONDARY_CAPTURE and int(ds.get("SamplesPerPixel", 1)) > 1 and "PlanarConfiguration" not in ds:
        out.append("Image Pixel: PlanarConfiguration (Type 1C, colour images) missing")
    if str(ds.SOPClassUID) == COMPREHENSIVE_SR and ds.get("Modality") != "SR":
        out.append("SR Document Series: Modality must be SR")
    return out
