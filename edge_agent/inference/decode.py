"""A stored instance's pixels as the small work image preprocessing needs.

A real detector image is 3000-4700 x 2300-3300 pixels at 12-16 bits (about
27 MB as uint16, 54 MB as float32), but the network reads 128 x 128. So the
full-size pixels live only for as long as it takes to reduce them:

* JPEG 2000 carries its own lower resolutions (wavelet levels): Pillow's
  OpenJPEG decodes straight at 1/2, 1/4, 1/8 of the size, which is 10-100
  times faster than a full decode and never holds the full image. The level
  nearest the work factor is taken (1/8 for a 3328 x 4096 image, whose
  block-mean factor is 6): its shorter side stays above 2.8 times the input
  size, and tests/edge_agent/inference/test_decode.py bounds the difference
  it makes. Pillow returns the level with the stored bits moved to the top of
  16 bits, a constant factor that preprocessing (relative to the image's own
  percentiles throughout) does not see.
* Everything else (uncompressed, RLE, JPEG, JPEG-LS) is decoded once, one
  frame only, and reduced at once by an integer-factor block mean
  (:func:`models.preprocess.to_work`) before any float copy is made.

Either way the result is a :class:`models.preprocess.WorkImage`, which
preprocessing finishes, so the reduction is the same one training and tests
see.
"""

from __future__ import annotations

import io
import logging
import math
import warnings

import numpy as np
import pydicom
from pydicom.encaps import get_frame
from pydicom.pixels.utils import pixel_array
from pydicom.uid import JPEG2000, JPEG2000Lossless

from models.preprocess import INPUT_SIZE, WorkImage, block_mean, to_work, work_factor

log = logging.getLogger(__name__)

_J2K = (JPEG2000Lossless, JPEG2000)


def _j2k_available() -> bool:
    from PIL import features

    return bool(features.check("jpg_2000"))


def _j2k_reduced(ds: pydicom.Dataset, k: int) -> WorkImage | None:
    """The first frame at 1/2**r of its size (2**r the power of two nearest k), or None when this file or Pillow cannot do that."""
    if (k < 2 or int(ds.get("SamplesPerPixel", 1) or 1) != 1 or int(ds.get("PixelRepresentation", 0) or 0) != 0
            or int(ds.get("BitsAllocated", 16) or 16) not in (8, 16) or not _j2k_available()):
        return None
    from PIL import Image, Jpeg2KImagePlugin

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    r = int(round(math.log2(k)))
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(frame)) as im:
                if not isinstance(im, Jpeg2KImagePlugin.Jpeg2KImageFile):
                    raise ValueError(f"Pillow read the frame as {im.format}, not a JPEG 2000 codestream")
                im.reduce = r  # decode only the resolution levels needed
                im.load()
                arr = np.asarray(im)
    except Exception as exc:  # a codestream with fewer levels, or one Pillow reads differently: decode it fully
        log.info("JPEG 2000 reduced decode not possible (%s: %s); decoding at full size", type(exc).__name__, exc)
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    f = 1 << r
    if arr.ndim != 2 or arr.shape != (-(-rows // f), -(-cols // f)):
        log.info("JPEG 2000 reduced decode gave %s for %dx%d at 1/%d; decoding at full size", arr.shape, rows, cols, f)
        return None
    return WorkImage(arr, f, rows, cols)


def bright_is_dense(arr: np.ndarray, ds: pydicom.Dataset, shifted: bool = False) -> np.ndarray:
    """MONOCHROME1 pixels inverted within the stored bit range, so the model always sees bright = dense.

    Ingest keeps MONOCHROME1 as sent (a re-sent file then maps to the same
    UIDs); the one place its pixels are read for the model is here. The range
    is the stored one, not the image's own minimum and maximum, so the result
    is what the same image stored as MONOCHROME2 would give. ``shifted``: the
    decoder moved the stored bits to the top of the type (Pillow's JPEG 2000
    decoder does). In place when the array is writable (no second full-size copy).
    """
    if str(ds.get("PhotometricInterpretation", "") or "").strip().upper() != "MONOCHROME1" or arr.dtype.kind not in "ui":
        return arr
    width = arr.dtype.itemsize * 8
    bits = min(int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or width), width)
    out = arr if arr.flags.writeable else arr.copy()
    if arr.dtype.kind == "u":
        top = ((1 << bits) - 1) << (width - bits if shifted else 0)
        np.minimum(out, top, out=out)
        np.subtract(out.dtype.type(top), out, out=out)
    else:  # signed: the range's low + high is -1, so the mirror image is the bitwise complement
        half = 1 << (bits - 1)
        np.clip(out, max(-half, int(np.iinfo(arr.dtype).min)), min(half - 1, int(np.iinfo(arr.dtype).max)), out=out)
        np.invert(out, out=out)
    return out


def work_from_pixels(pixels: np.ndarray, factor: int, ds: pydicom.Dataset, size: int = INPUT_SIZE, *, shifted: bool = False) -> WorkImage:
    """The work image of pixels already decoded at 1/``factor`` of the stored size (1: full size).

    What :func:`work_image` makes of a stored instance, from pixels someone
    else decoded: ingest decodes every image once for its checks (in full,
    or a large JPEG 2000 at about 1024 px), and hands them over this way, so
    the inference worker need not read, decrypt and decode the view again.
    MONOCHROME1 is inverted here (in place when the array is writable);
    ``shifted`` as in :func:`bright_is_dense`. Pixels decoded at a level
    finer than the one :func:`work_image` would choose are block-meaned to
    that level, so either way preprocessing sees the same grid.
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    arr = bright_is_dense(pixels, ds, shifted=shifted)
    if factor == 1:
        if arr.ndim == 3:  # colour: luminance
            arr = arr.mean(axis=-1)
        return to_work(arr, size)
    k = work_factor(rows, cols, size)
    level = 1 << int(round(math.log2(k))) if k >= 2 else 1
    if level > factor and level % factor == 0:
        return to_work(WorkImage(block_mean(arr, level // factor), level, rows, cols), size)
    return to_work(WorkImage(arr, factor, rows, cols), size)


def work_image(dicom_bytes: bytes, size: int = INPUT_SIZE) -> WorkImage:
    """The first frame of a stored (de-identified) instance, reduced for preprocessing at ``size``.

    Raises what pydicom and the decoders raise (ValueError, TypeError,
    AttributeError, NotImplementedError, RuntimeError, KeyError) for a file
    that cannot be decoded; the caller records the view as unreadable.
    """
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes))
    k = work_factor(int(ds.Rows), int(ds.Columns), size)
    if str(ds.file_meta.TransferSyntaxUID) in _J2K:
        reduced = _j2k_reduced(ds, k)
        if reduced is not None:
            return work_from_pixels(reduced.pixels, reduced.factor, ds, size, shifted=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = pixel_array(ds, index=0)  # one frame, not the whole multi-frame object
    del ds.PixelData  # the encoded pixel data is no longer needed (the header still is)
    return work_from_pixels(arr, 1, ds, size)
