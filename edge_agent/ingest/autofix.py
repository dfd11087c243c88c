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
from collections.abc import Callable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from edge_agent.errors import DicomRejected
from edge_agent.ingest import views
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


def derived_uid(*parts: str) -> str:
    """A stable 2.25 UID from content, so a re-sent broken file gets the same repair."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def fix_uids(ds: Dataset, content_digest: str | Callable[[], str]) -> list[Fix]:
    """``content_digest`` (the file's SHA-256, or a function giving it) seeds a missing SOP Instance UID; a function
    is called only then (hashing a 27 MB detector image costs about 25 ms, and nearly every file has its UID)."""
    fixes: list[Fix] = []
    study_seed = (str(ds.get("PatientID", "")), str(ds.get("StudyDate", "")), str(ds.get("AccessionNumber", "")), str(ds.get("StudyID", "")))
    series_seed = (str(ds.get("StudyInstanceUID", "")), str(ds.get("Modality", "")), str(ds.get("SeriesNumber", "")))  # as sent
    seeds: dict[str, Callable[[], tuple[str, ...]]] = {
        "StudyInstanceUID": lambda: study_seed,
        "SeriesInstanceUID": lambda: series_seed,
        "SOPInstanceUID": lambda: (content_digest if isinstance(content_digest, str) else content_digest(),),
    }
    for kw, seed in seeds.items():
        value = ds.get(kw)
        if valid_uid(value):
            continue
        if value:
            new = derived_uid("invalid", kw, str(value))
            fixes.append(Fix("uid_invalid", f"{kw} was not a valid UID; replaced with a stable derived UID.", kw))
        else:
            new = derived_uid("missing", kw, *seed())
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
    elif modality and modality != "MG" and str(ds.SOPClassUID) in MG_CLASSES:
        fixes.append(_modality_to_mg(ds, modality))
    return fixes


def _modality_to_mg(ds: Dataset, modality: str) -> Fix:
    """A mammography SOP class with another Modality (seen: US) is a mammogram: the SOP class decides.

    The SOP class is what the modality declared the object to be, and its IOD
    requires Modality MG; a wrong Modality is a configuration slip (a shared
    template, a mis-set export node). Left alone the image was stored and never
    triaged. Only when the pixels cannot be a mammogram (colour: every
    mammography IOD is greyscale) is the object refused, since then it is
    the SOP class that is wrong and a person must say what the object is.
    """
    said = modality if re.fullmatch(r"[A-Z0-9_ ]{1,16}", modality) else "an unknown value"
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if samples != 1 or photometric not in ("", "MONOCHROME1", "MONOCHROME2"):
        raise DicomRejected(
            "modality_contradicts_sop_class",
            f"The SOP class is {UID(str(ds.SOPClassUID)).name} but Modality is {said} and the pixels are colour "
            f"({photometric or samples}), which no mammogram is. Check the sending device's export settings and send it again.",
        )
    ds.Modality = "MG"
    return Fix("modality_mg", f"Modality {said} contradicts the mammography SOP class ({UID(str(ds.SOPClassUID)).name}); set to MG.", "Modality")


def _mg_class(ds: Dataset) -> UID:
    intent = str(ds.get("PresentationIntentType", "") or "").upper()
    return MG_FOR_PROCESSING if intent == "FOR PROCESSING" else MG_FOR_PRESENTATION


def fix_photometric(ds: Dataset) -> list[Fix]:
    if "PixelData" not in ds or str(ds.get("PhotometricInterpretation", "") or "").strip():
        return []
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    return [Fix("photometric_missing", f"PhotometricInterpretation was missing; set to {ds.PhotometricInterpretation} from SamplesPerPixel={samples}.", "PhotometricInterpretation")]


def dense_is_dark(ds: Dataset) -> bool:
    """MONOCHROME1: the lowest value is shown white, so dense tissue is stored dark.

    Such images are kept as sent (pixels, transfer syntax and UIDs untouched,
    so a re-sent file de-duplicates); whatever reads the pixels takes the
    polarity from here and inverts where it looks (side of the breast,
    burned-in text, the model's input, the kiosk's picture).
    """
    return str(ds.get("PhotometricInterpretation", "") or "").strip().upper() == "MONOCHROME1"


def _text(value: object) -> str:
    """A header value as one string (multi-valued joined by spaces); '' when absent."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return " ".join(str(v) for v in value)
    return str(value)


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    seq = ds.get(keyword)
    return [item for item in (seq or []) if isinstance(item, Dataset)]


def _coded(items: list[Dataset]) -> tuple[views.Coded, ...]:
    return tuple(views.Coded(_text(i.get("CodingSchemeDesignator")), _text(i.get("CodeValue")), _text(i.get("CodeMeaning"))) for i in items)


def evidence_of(ds: Dataset) -> views.Evidence:
    """What the dataset says about its view and side, as the plain strings ``views.read_views`` reads."""
    frame_laterality = ""
    for group in _items(ds, "SharedFunctionalGroupsSequence")[:1]:
        for anatomy in _items(group, "FrameAnatomySequence")[:1]:
            frame_laterality = _text(anatomy.get("FrameLaterality"))
    regions = _items(ds, "AnatomicRegionSequence")
    modifiers = [m for region in regions for m in _items(region, "AnatomicRegionModifierSequence")]
    return views.Evidence(
        view_position=_text(ds.get("ViewPosition")),
        view_codes=_coded(_items(ds, "ViewCodeSequence")),
        image_laterality=_text(ds.get("ImageLaterality")),
        frame_laterality=frame_laterality,
        series_laterality=_text(ds.get("Laterality")),
        region_codes=_coded(regions + modifiers),
        texts=tuple((kw, _text(ds.get(kw))) for kw in views.TEXT_FIELDS),
    )


def _otsu(img8: np.ndarray) -> int:
    hist = np.bincount(img8.ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    w = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * w - mu) ** 2 / (w * (1 - w) + 1e-12)
    return int(np.argmax(between))


def side_from_pixels(pixels: np.ndarray, dense_dark: bool = False) -> tuple[str, float]:
    """Which breast, from where the tissue is: the half holding the chest wall holds most of the breast.

    In the standard mammography display a right breast has its chest wall on
    the image's right edge and a left breast on its left. Tissue is what lies
    above an Otsu threshold (film markers are too small to tip the balance).
    Returns ('', ratio) when the halves are too alike to tell. On the 258
    mini-MIAS images with a recorded side this rule is right every time.
    ``dense_dark`` (MONOCHROME1) inverts the scaled image, so tissue is bright either way.
    """
    img = np.asarray(pixels, dtype=np.float32)
    if img.ndim == 3:  # multi-frame or colour: use the first plane
        img = img[0] if img.shape[0] < img.shape[-1] else img[..., 0]
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return "", 1.0
    img8 = ((img - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if dense_dark:
        img8 = 255 - img8
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
    """Fill ImageLaterality and ViewPosition of a mammogram from the other tags, codes and descriptions, or the side from the pixels.

    The order of sources is ``views``' (tags, then codes, then text); the
    pixels come last and give the side only. Each fix names its source, and
    a source that disagrees with the value kept is reported too.
    """
    if str(ds.get("Modality", "")).upper() != "MG":
        return []
    reading = views.read_views(evidence_of(ds))
    return _fix_laterality(ds, reading, pixels) + _fix_view(ds, reading)


def _fix_laterality(ds: Dataset, reading: views.ViewReading, pixels: np.ndarray | None) -> list[Fix]:
    fixes: list[Fix] = []
    tag = _text(ds.get("ImageLaterality")).strip().upper()
    was = "not L, R or B" if tag else "missing"
    chosen = reading.laterality
    if chosen is not None and chosen.source != "ImageLaterality":
        ds.ImageLaterality = chosen.value
        fixes.append(Fix("laterality_inferred", f"ImageLaterality={chosen.value} from {chosen.source}; the tag was {was}.", "ImageLaterality"))
    elif chosen is None:
        side, ratio = side_from_pixels(pixels, dense_is_dark(ds)) if pixels is not None else ("", 0.0)
        if side:
            ds.ImageLaterality = side
            where = "left" if side == "L" else "right"
            fixes.append(Fix("laterality_inferred", f"ImageLaterality={side} from the image (tissue on the {where} edge, ratio {ratio:.2f}); the tag was {was}.", "ImageLaterality"))
        else:
            fixes.append(Fix("laterality_unknown", f"ImageLaterality is {was} and could not be inferred; the study completes only by timeout.", "ImageLaterality"))
    if chosen is not None:
        fixes += [Fix("laterality_conflict", f"ImageLaterality={chosen.value} (from {chosen.source}) kept, but {other.source} says {other.value}: "
                      "check the side marker and the labelling of this image.", "ImageLaterality") for other in reading.laterality_disagrees]
    return fixes


def _fix_view(ds: Dataset, reading: views.ViewReading) -> list[Fix]:
    fixes: list[Fix] = []
    tag = _text(ds.get("ViewPosition")).strip()
    was = "not a mammography view term" if tag else "missing"
    chosen = reading.view
    if chosen is None:
        return [Fix("view_unknown", f"ViewPosition is {was} and could not be inferred; the study completes only by timeout.", "ViewPosition")]
    if chosen.source != "ViewPosition":
        ds.ViewPosition = chosen.value
        fixes.append(Fix("view_inferred", f"ViewPosition={chosen.value} from {chosen.source}; the tag was {was}.", "ViewPosition"))
    elif tag != chosen.value:
        ds.ViewPosition = chosen.value
        fixes.append(Fix("view_normalised", f"ViewPosition rewritten as the standard term {chosen.value} (upper case; an implant-displaced view counts as its base view).", "ViewPosition"))
    fixes += [Fix("view_conflict", f"ViewPosition={chosen.value} (from {chosen.source}) kept, but {other.source} says {other.value}: "
                  "check the labelling of this image.", "ViewPosition") for other in reading.view_disagrees]
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


def apply_all(ds: Dataset, pixels: np.ndarray | None, content_digest: str | Callable[[], str]) -> list[Fix]:
    """Every rule in order; the pixels (as decoded, MONOCHROME1 not inverted) are read, never changed."""
    return fix_uids(ds, content_digest) + fix_sop_class(ds) + fix_photometric(ds) + fix_mammo_view(ds, pixels)
