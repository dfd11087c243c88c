"""Mammography DICOM for tests and demos: wrap any 2-D image in a Digital Mammography X-Ray (For Presentation) object.

There is no real mammography DICOM among the public test files, so the
tests make their own: synthetic pixels from ``models.synthetic`` (or a
simple built-in pattern when that is absent) or the mini-MIAS images, in a
header with the tags a real full-field digital mammography unit writes, a
fake Turkish patient identity (ISO_IR 148), and ImageType DERIVED with a
DerivationDescription saying where the pixels came from. Nothing made here
may be mistaken for a patient image.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from edge_agent.ingest.autofix import MG_FOR_PRESENTATION

VIEW_CODE = {  # SNOMED CT, CID 4014
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
    "ML": ("399260004", "medio-lateral"),
    "LM": ("399352003", "latero-medial"),
}
SCREENING_VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))


@dataclass(frozen=True)
class FakePatient:
    name: str
    patient_id: str
    birth_date: str
    sex: str = "F"


TURKISH_PATIENTS = (
    FakePatient("ÇELİK^AYŞE", "38291047562", "19680412"),
    FakePatient("ŞAHİN^GÜLŞEN", "47102938475", "19711103"),
    FakePatient("ÖZTÜRK^İPEK", "52019384756", "19650721"),
    FakePatient("YILDIZ^ÖZLEM", "61928374650", "19740228"),
    FakePatient("DOĞAN^ŞEYMA", "70192837465", "19690917"),
)


def fake_patient(seed: int) -> FakePatient:
    """A made-up patient; 11-digit IDs shaped like (but not valid as) Turkish national numbers."""
    if seed < len(TURKISH_PATIENTS):
        return TURKISH_PATIENTS[seed]
    base = TURKISH_PATIENTS[seed % len(TURKISH_PATIENTS)]
    digits = str(int(hashlib.sha256(f"pid{seed}".encode()).hexdigest(), 16))[-11:]
    return FakePatient(base.name + f"{seed}", digits, base.birth_date)


def _uid(*parts: object) -> UID:
    return generate_uid(entropy_srcs=["mammo-mg-generator", *map(str, parts)])


def fallback_pixels(seed: int, laterality: str, size: int = 256) -> np.ndarray:
    """A half-disc 'breast' against the chest-wall edge (left edge for L, right for R), with a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wall_x = 0 if laterality == "L" else size - 1
    r = np.hypot((xx - wall_x) / (0.75 * size), (yy - size / 2) / (0.45 * size))
    img = np.where(r < 1.0, 120 + 100 * (1 - r), 0) + rng.normal(0, 6, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_pixels(seed: int, laterality: str, size: int = 256) -> np.ndarray:
    try:
        from models.synthetic import generate
    except ImportError:
        return fallback_pixels(seed, laterality, size)
    return np.asarray(generate(seed, size=size, laterality=laterality).image)


def mias_pixels(mias_dir: Path, ref: str) -> tuple[np.ndarray, str]:
    """mini-MIAS image ``ref`` (e.g. 'mdb001') and its side: odd numbers are right breasts, even left."""
    from PIL import Image

    with Image.open(Path(mias_dir) / "images" / f"{ref}.png") as im:
        arr = np.asarray(im.convert("L"))
    return arr, ("R" if int(ref[3:]) % 2 else "L")


def mammogram(
    pixels: np.ndarray,
    *,
    patient: FakePatient,
    laterality: str,
    view: str,
    study_uid: str | None = None,
    study_date: str = "20260315",
    accession: str = "ACC2026031501",
    instance_number: int = 1,
    derivation: str = "Synthetic image made by MammoAI-TR Edge for testing; not a patient image",
    seed: int = 0,
) -> Dataset:
    """A Digital Mammography X-Ray Image (For Presentation) object around ``pixels`` (2-D uint8 or uint16)."""
    arr = np.ascontiguousarray(pixels)
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError("pixels must be a 2-D uint8 or uint16 array")
    study_uid = study_uid or _uid("study", patient.patient_id, study_date, seed)
    sop_uid = _uid("sop", study_uid, laterality, view, instance_number)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 148"
    ds.ImageType = ["DERIVED", "PRIMARY", "", ""]
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.StudyTime, ds.SeriesTime, ds.AcquisitionTime, ds.ContentTime = "093000", "093100", "093105", "093106"
    ds.AccessionNumber = accession
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "MammoAI Synthetic"
    ds.InstitutionName = "Kocasinan 3 No'lu Aile Sağlığı Merkezi"
    ds.InstitutionAddress = "Cumhuriyet Mah. 12, Kocasinan, Kayseri"
    ds.ReferringPhysicianName = "KAYA^MEHMET"
    ds.StationName = "MAMMO01"
    ds.StudyDescription = "MAMOGRAFİ TARAMA"
    ds.SeriesDescription = f"{laterality} {view}"
    ds.OperatorsName = "ARSLAN^ELİF"
    ds.ManufacturerModelName = "SynthMammo 1"
    ds.DerivationDescription = derivation
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "TC KIMLIK"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    age = int(study_date[:4]) - int(patient.birth_date[:4])
    ds.PatientAge = f"{age:03d}Y"
    ds.BodyPartExamined = "BREAST"
    ds.DeviceSerialNumber = "SN-4711-TR"
    ds.SoftwareVersions = "1.0"
    ds.KVP = "28"
    ds.ExposureTime = 1200
    ds.BodyPartThickness = "45"
    ds.CompressionForce = "110"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.DetectorType = "DIRECT"
    ds.ViewPosition = view
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = _uid("series", study_uid, laterality, view)
    ds.StudyID = "1"
    ds.SeriesNumber = 1 + SCREENING_VIEWS.index((laterality, view)) if (laterality, view) in SCREENING_VIEWS else 9
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ["P", "L"] if laterality == "R" else ["A", "R"]
    ds.ImageLaterality = laterality
    ds.BurnedInAnnotation = "NO"
    ds.BreastImplantPresent = "NO"
    ds.LossyImageCompression = "00"
    bits = 8 if arr.dtype == np.uint8 else 12
    if arr.dtype == np.uint16 and int(arr.max()) >= 1 << 12:
        bits = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = arr.shape
    ds.PixelSpacing = ds.ImagerPixelSpacing = ["0.1", "0.1"]
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = str((1 << bits) // 2)
    ds.WindowWidth = str(1 << bits)
    ds.PresentationLUTShape = "IDENTITY"
    code, meaning = VIEW_CODE.get(view, VIEW_CODE["CC"])
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "SCT", meaning
    ds.ViewCodeSequence = [item]
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OB" if arr.dtype == np.uint8 else "OW"
    return ds


def screening_study(patient: FakePatient, *, seed: int = 0, size: int = 256, study_date: str = "20260315") -> list[Dataset]:
    """The four screening views (R-CC, L-CC, R-MLO, L-MLO) of one study, synthetic pixels."""
    study_uid = _uid("study", patient.patient_id, study_date, seed)
    return [
        mammogram(synthetic_pixels(seed * 10 + i, lat, size), patient=patient, laterality=lat, view=view,
                  study_uid=study_uid, study_date=study_date, instance_number=i + 1, seed=seed)
        for i, (lat, view) in enumerate(SCREENING_VIEWS)
    ]


def to_bytes(ds: Dataset) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write(ds: Dataset, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_bytes(ds))
    return path


def today() -> str:
    return dt.date.today().strftime("%Y%m%d")
