"""Heatmaps as a Secondary Capture series labelled as AI output; the original images are never touched.

One RGB Secondary Capture image per scored view: a copy of the view at the
heatmap's size (at most 768 px, see ``edge_agent.inference.worker``) with the
model's heatmap blended over it in colour. It sits in its own series,
"AI HEATMAP (MammoAI-TR) - not for diagnosis", with ImageType
DERIVED\\SECONDARY, the derivation described, and a Source Image Sequence
pointing at the view it was made from, so any viewer shows it beside the
originals and nobody mistakes it for one. No text is drawn into the pixels
(BurnedInAnnotation NO): the labels are in the header.

A Secondary Capture rather than a Grayscale Softcopy Presentation State
overlay: a GSPS overlay is one bit deep (a map of "hot" pixels, no
gradation), and many PACS viewers apply a GSPS only on request; a Secondary
Capture displays everywhere. docs/dicom-ai-objects.md says more.
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array

SERIES_DESCRIPTION = "AI HEATMAP (MammoAI-TR) - not for diagnosis"
SERIES_NUMBER = 9002
DERIVATION = ("AI heatmap of the MammoAI-TR screening model blended over a reduced copy of the source view; "
              "for orientation only, not for diagnosis. The original image is unchanged.")


def grey8(ds: Dataset) -> np.ndarray:
    """The view's first frame as 8-bit grey, dense tissue bright (MONOCHROME1 inverted), windowed to its 1st-99th percentiles."""
    arr = np.asarray(pixel_array(ds, index=0) if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 else pixel_array(ds), dtype=np.float32)
    if arr.ndim == 3:
        arr = arr.mean(axis=-1)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = arr.max() - arr
    lo, hi = np.percentile(arr, [1.0, 99.0])
    out: np.ndarray = np.clip((arr - lo) * (255.0 / max(float(hi - lo), 1.0)), 0, 255).astype(np.uint8)
    return out


def colour(heat: np.ndarray) -> np.ndarray:
    """A 0..1 heatmap as RGB in 0..1: red where the model looked hardest, shading to yellow, as the kiosk draws it."""
    h = np.clip(heat, 0.0, 1.0)
    rgb: np.ndarray = np.stack([np.ones_like(h), 0.9 * (1.0 - h), np.zeros_like(h)], axis=-1)
    return rgb


def blend(grey: np.ndarray, heat: np.ndarray, max_alpha: float = 0.75) -> np.ndarray:
    """RGB uint8: the grey view with the heatmap over it, as the kiosk's overlay: nothing below 0.15, more opaque as heat rises."""
    g = grey.astype(np.float32)[..., None] / 255.0
    alpha = max_alpha * np.clip((np.asarray(heat, dtype=np.float32) - 0.15) / 0.85, 0.0, 1.0)[..., None]
    out: np.ndarray = np.clip(255.0 * ((1 - alpha) * g + alpha * colour(heat)), 0, 255).astype(np.uint8)
    return out


def heatmap_image(source: Dataset, heatmap_png: bytes, *, series_uid: str, sop_uid: str, instance_number: int) -> Dataset:
    """The Secondary Capture of one view (``source``: this destination's copy, with its pixels) and its stored heatmap PNG."""
    with Image.open(io.BytesIO(heatmap_png)) as im:
        heat = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    grey = np.asarray(Image.fromarray(grey8(source)).resize((heat.shape[1], heat.shape[0]), Image.Resampling.BILINEAR))
    laterality = str(getattr(source, "ImageLaterality", "") or "") or None
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=blend(grey, heat), photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8, coordinate_system=hd.CoordinateSystemNames.PATIENT, series_instance_uid=series_uid,
        series_number=SERIES_NUMBER, sop_instance_uid=sop_uid, instance_number=instance_number, manufacturer="MammoAI-TR",
        laterality=laterality if laterality in ("L", "R") else None,
        patient_orientation=tuple(source.PatientOrientation) if "PatientOrientation" in source and len(source.PatientOrientation) == 2 else ("A", "R"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.ImageType = ["DERIVED", "SECONDARY", "AI_HEATMAP"]
    sc.DerivationDescription = DERIVATION
    sc.ImageComments = "AI OUTPUT - NOT FOR DIAGNOSIS"
    sc.BurnedInAnnotation = "NO"
    sc.ConversionType = "WSD"  # workstation: made by software from another image
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc
