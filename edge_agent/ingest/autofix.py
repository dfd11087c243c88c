"""DICOM tag auto-fix: plain functions that repair a parsed dataset and say what they did.

Each rule takes the dataset (and the decoded pixels where it needs them),
changes it in place, and returns the ``Fix`` records a technician sees. A
``Fix`` names tags and technical values only, never a name or an ID.
Rules run before de-identification because some of the evidence they use
(series descriptions, protocol names) is removed by it.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from edge_agent.ingest.reader import valid_uid
from edge_agent.ingest.records import Fix

MG_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.2")
MG_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.2.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
MG_CLASSES = frozenset({
    MG_FOR_PRESENTATION, MG_FOR_PROCESSING,
    "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis
    "1.2.840.10008.5.1.4.1.1.13.1.4",  # Breast Projection X-Ray, For Presentation
    "1.2.840.10008.5.1.4.1.1.13.1.5",  # Breast Projection X-Ray, For Processing
})
# SNOMED CT and legacy SNOMED-RT codes of the mammography views (CID 4014).
VIEW_CODES = {
    "399162004": "CC", "R-10242": "CC", "399368009": "MLO", "R-10226": "MLO", "399260004": "ML", "R-10224": "ML",
    "399352003": "LM", "R-10228": "LM", "399099002": "XCCL", "R-1024A": "XCCL", "399192003": "XCCM", "R-1024B": "XCCM",
}
VIEWS = ("XCCL", "XCCM", "MLO", "CC", "ML", "LM")
_VIEW_RE = re.compile(r"(?<![A-Z])(?P<side>L|R|LEFT|RIGHT|SOL|SAG|SAĞ)?[\s_\-]*(?P<view>XCCL|XCCM|MLO|CC|ML|LM|OBL)(?![A-Z])")
_SIDE_RE = re.compile(r"(?<![A-Z])(LEFT|RIGHT|SOL|SAG|SAĞ)(?![A-Z])")
_SIDES = {"L": "L", "LEFT": "L", "SOL": "L", "R": "R", "RIGHT": "R", "SAG": "R", "SAĞ": "R"}


def derived_uid(*parts: str) -> str:
    """A stable 2.25 UID from content, so a re-sent broken file gets the same repair."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def fix_uids(ds: Dataset, content_digest: str) -> list[Fix]:
    fixes: list[Fix] = []
    seeds = {
        "StudyInstanceUID": (str(ds.get("PatientID", "")), str(ds.get("StudyDate", "")), str(ds.get("AccessionNumber", "")), str(ds.get("StudyID", ""))),
        "SeriesInstanceUID": (str(ds.get("StudyInstanceUID", "")), str(ds.get("Modality", "")), str(ds.get("SeriesNumber", ""))),
        "SOPInstanceUID": (content_digest,),
    }
    for kw, seed in seeds.items():
        value = ds.get(kw)
        if valid_uid(value):
            continue
        if value:
            new = derived_uid("invalid", kw, str(value))
            fixes.append(Fix("uid_invalid", f"{kw} was not a valid UID; replaced with a stable derived UID.", kw))
        else:
            new = derived_uid("missing", kw, *seed)
            fixes.append(Fix("uid_missing", f"{kw} was missing; generated a stable UID from the file's content.", kw))
        setattr(ds, kw, new)
    return fixes


def fix_sop_class(ds: Dataset) -> list[Fix]:
    fixes: list[Fix] = []
    sop = str(ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").upper()
    if not valid_uid(sop):
        meta_sop = str(getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID", "") or "")
        if valid_uid(meta_sop):
            new, why = meta_sop, "taken from the file meta information"
        elif modality == "MG":
            new, why = _mg_class(ds), "Modality is MG"
        else:
            new, why = SECONDARY_CAPTURE, "no other evidence: Secondary Capture"
        ds.SOPClassUID = new
        fixes.append(Fix("sop_class_missing", f"SOP Class UID was missing or invalid; set to {UID(new).name} ({why}).", "SOPClassUID"))
        sop = new
    if modality == "MG" and sop not in MG_CLASSES:
        new = _mg_class(ds)
        fixes.append(Fix("sop_class_mg", f"Modality is MG but the SOP Class was {UID(sop).name}; set to {new.name}.", "SOPClassUID"))
        ds.SOPClassUID = new
    if not modality and str(ds.SOPClassUID) in MG_CLASSES:
        ds.Modality = "MG"
        fixes.append(Fix("modality_missing", "Modality was missing on a mammography SOP Class; set to MG.", "Modality"))
    return fixes


def _mg_class(ds: Dataset) -> UID:
    intent = str(ds.get("PresentationIntentType", "") or "").upper()
    return MG_FOR_PROCESSING if intent == "FOR PROCESSING" else MG_FOR_PRESENTATION


def fix_photometric(ds: Dataset) -> list[Fix]:
    if "PixelData" not in ds or str(ds.get("PhotometricInterpretation", "") or "").strip():
        return []
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    return [Fix("photometric_missing", f"PhotometricInterpretation was missing; set to {ds.PhotometricInterpretation} from SamplesPerPixel={samples}.", "PhotometricInterpretation")]


def fix_monochrome1(ds: Dataset, pixels: np.ndarray | None) -> tuple[np.ndarray | None, list[Fix]]:
    """Store every greyscale image as MONOCHROME2 (bright = dense), inverting MONOCHROME1 pixels and windows.

    The model and the viewer then see one convention. The pixels are stored
    uncompressed afterwards, since they changed.
    """
    if pixels is None or str(ds.get("PhotometricInterpretation", "")).strip() != "MONOCHROME1":
        return pixels, []
    bits_stored = int(ds.get("BitsStored", ds.BitsAllocated))
    if int(ds.get("PixelRepresentation", 0)) == 0:
        top = (1 << bits_stored) - 1
        inverted = (top - pixels.astype(np.int64)).astype(pixels.dtype)
    else:
        lo, hi = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
        top = lo + hi
        inverted = (top - pixels.astype(np.int64)).astype(pixels.dtype)
    ds.set_pixel_data(inverted, "MONOCHROME2", bits_stored)
    if "WindowCenter" in ds:
        try:
            centres = ds.WindowCenter if ds["WindowCenter"].VM > 1 else [ds.WindowCenter]
            slope = float(ds.get("RescaleSlope", 1) or 1)
            intercept = float(ds.get("RescaleIntercept", 0) or 0)
            new = [round(top * slope + 2 * intercept - float(c), 3) for c in centres]
            ds.WindowCenter = new if len(new) > 1 else new[0]
        except (TypeError, ValueError):
            del ds["WindowCenter"]
    for kw in ("VOILUTSequence", "VOILUTFunction", "PresentationLUTShape"):
        if kw in ds:
            del ds[kw]
    ds.PresentationLUTShape = "IDENTITY"
    return inverted, [Fix("monochrome1_inverted", "MONOCHROME1 image inverted to MONOCHROME2 (windows adjusted, stored uncompressed).", "PhotometricInterpretation")]


def _text_evidence(ds: Dataset) -> str:
    parts = [str(ds.get(k, "") or "") for k in ("SeriesDescription", "ProtocolName", "ImageComments", "StudyDescription", "AcquisitionDeviceProcessingDescription")]
    return " ".join(parts).upper()


def view_from_tags(ds: Dataset) -> tuple[str, str]:
    """(laterality, view) from ViewCodeSequence and descriptions; '' where the tags say nothing."""
    view = ""
    for item in ds.get("ViewCodeSequence", []) or []:
        view = VIEW_CODES.get(str(item.get("CodeValue", "")), "")
        if view:
            break
    text = _text_evidence(ds)
    side = ""
    for m in _VIEW_RE.finditer(text):
        if not view:
            view = "MLO" if m.group("view") == "OBL" else m.group("view")
        if m.group("side") and not side:
            side = _SIDES.get(m.group("side"), "")
    if not side:
        m = _SIDE_RE.search(text)
        side = _SIDES.get(m.group(1), "") if m else ""
    compact = re.search(r"(?<![A-Z])([LR])(CC|MLO|ML|LM|XCCL)(?![A-Z])", text)
    if compact:
        side = side or compact.group(1)
        view = view or compact.group(2)
    return side, view


def _otsu(img8: np.ndarray) -> int:
    hist = np.bincount(img8.ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    w = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * w - mu) ** 2 / (w * (1 - w) + 1e-12)
    return int(np.argmax(between))


def side_from_pixels(pixels: np.ndarray) -> tuple[str, float]:
    """Which breast, from where the tissue is: the half holding the chest wall holds most of the breast.

    In the standard mammography display a right breast has its chest wall on
    the image's right edge and a left breast on its left. Tissue is what lies
    above an Otsu threshold (film markers are too small to tip the balance).
    Returns ('', ratio) when the halves are too alike to tell. On the 258
    mini-MIAS images with a recorded side this rule is right every time.
    """
    img = np.asarray(pixels, dtype=np.float32)
    if img.ndim == 3:  # multi-frame or colour: use the first plane
        img = img[0] if img.shape[0] < img.shape[-1] else img[..., 0]
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return "", 1.0
    img8 = ((img - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    tissue = img8 > _otsu(img8)
    half = tissue.shape[1] // 2
    left, right = float(tissue[:, :half].mean()), float(tissue[:, -half:].mean())
    ratio = (left + 1e-6) / (right + 1e-6)
    if ratio > 1.25:
        return "L", ratio
    if ratio < 0.8:
        return "R", ratio
    return "", ratio


def fix_mammo_view(ds: Dataset, pixels: np.ndarray | None) -> list[Fix]:
    """Fill ImageLaterality and ViewPosition of mammograms from other tags, or the side from the pixels."""
    if str(ds.get("Modality", "")).upper() != "MG":
        return []
    fixes: list[Fix] = []
    side_tag, view_tag = view_from_tags(ds)
    laterality = str(ds.get("ImageLaterality", "") or "").upper()
    if laterality not in ("L", "R", "B", "U"):
        series_lat = str(ds.get("Laterality", "") or "").upper()
        if series_lat in ("L", "R"):
            new, why = series_lat, "the series Laterality (0020,0060)"
        elif side_tag:
            new, why = side_tag, "the series description/protocol name"
        elif pixels is not None:
            new, ratio = side_from_pixels(pixels)
            why = f"the image (tissue on the {'left' if new == 'L' else 'right'} edge, ratio {ratio:.2f})"
        else:
            new, why = "", ""
        if new:
            ds.ImageLaterality = new
            fixes.append(Fix("laterality_inferred", f"ImageLaterality was {'invalid' if laterality else 'missing'}; set to {new} from {why}.", "ImageLaterality"))
        else:
            fixes.append(Fix("laterality_unknown", "ImageLaterality is missing and could not be inferred; the study completes only by timeout.", "ImageLaterality"))
    view = str(ds.get("ViewPosition", "") or "").upper().strip()
    if view not in VIEWS:
        if view_tag:
            ds.ViewPosition = view_tag
            fixes.append(Fix("view_inferred", f"ViewPosition was {'invalid' if view else 'missing'}; set to {view_tag} from the view code or descriptions.", "ViewPosition"))
        else:
            fixes.append(Fix("view_unknown", "ViewPosition is missing and could not be inferred; the study completes only by timeout.", "ViewPosition"))
    return fixes


def summarise(fixes: list[Fix]) -> list[Fix]:
    """Collapse repeated fixes of one kind (a file with 300 UN elements gets one line, with the count)."""
    counts = Counter(f.code for f in fixes)
    out: list[Fix] = []
    seen: set[str] = set()
    for f in fixes:
        if counts[f.code] > 3:
            if f.code not in seen:
                seen.add(f.code)
                out.append(Fix(f.code, f"{counts[f.code]} elements: {f.message}", ""))
        else:
            out.append(f)
    return out


def apply_all(ds: Dataset, pixels: np.ndarray | None, content_digest: str) -> tuple[np.ndarray | None, list[Fix]]:
    fixes = fix_uids(ds, content_digest) + fix_sop_class(ds) + fix_photometric(ds)
    pixels, mono = fix_monochrome1(ds, pixels)
    fixes += mono + fix_mammo_view(ds, pixels)
    return pixels, fixes
