"""Defensive DICOM reading: refuse what is too big, too deep, too slow or undecodable, before it costs us.

Order matters. The file size is checked before parsing, the declared image
size (rows x columns x frames x samples) before a single pixel is decoded,
and the transfer syntax against the installed pixel decoders before
decoding. Everything refused raises ``DicomRejected`` with a stable reason
code; the caller quarantines the bytes.
"""

from __future__ import annotations

import io
import logging
import math
import re
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.tag import BaseTag
from pydicom.uid import JPEG2000, UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from edge_agent.errors import DicomRejected
from edge_agent.ingest.records import Fix


class _DropValueWarnings(logging.Filter):
    """pydicom logs each invalid value it meets, value included; on this box a value may be a patient's name."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


if not any(isinstance(f, _DropValueWarnings) for f in logging.getLogger("pydicom").filters):
    logging.getLogger("pydicom").addFilter(_DropValueWarnings())

# Transfer syntaxes pydicom 3.0 does not know by name (DICOM 2024+).
EXTRA_TS_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: The checks on pixels look at most this many pixels a side (``burned_in.MAX_SIDE``).
CHECK_SIDE = 1024
_REDUCIBLE = frozenset({JPEG2000Lossless, JPEG2000, JPEGBaseline8Bit})
TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC"}
# ISO 8859-9 (Latin-5) differs from Latin-1 only at these six positions: Ğ İ Ş ğ ı ş.
_TURKISH_BYTES = frozenset(b"\xd0\xdd\xde\xf0\xfd\xfe")
_CHARSET_ALIASES = {
    "ISO_IR148": "ISO_IR 148", "ISO-IR 148": "ISO_IR 148", "ISO IR 148": "ISO_IR 148", "LATIN5": "ISO_IR 148",
    "ISO-8859-9": "ISO_IR 148", "ISO_IR100": "ISO_IR 100", "ISO-IR 100": "ISO_IR 100", "LATIN1": "ISO_IR 100",
    "ISO-8859-1": "ISO_IR 100", "UTF-8": "ISO_IR 192", "UTF8": "ISO_IR 192", "ISO_IR192": "ISO_IR 192",
}


@dataclass(frozen=True)
class ReadLimits:
    max_file_bytes: int = 1 << 30
    max_pixels: int = 100_000_000
    max_depth: int = 16
    timeout_s: float = 60.0


@dataclass(frozen=True)
class Decoded:
    """A parsed file: the dataset, the pixels the checks read (None for non-image objects) and what reading had to repair.

    The pixels are the first frame as stored (MONOCHROME1 not inverted), for
    a large JPEG 2000 or JPEG baseline image at a lower resolution (``_reduced_for_checks``).
    """

    ds: Dataset
    pixels: np.ndarray | None
    fixes: tuple[Fix, ...]
    transfer_syntax: str
    factor: int = 1  # the pixels are 1/factor of the stored size (a reduced JPEG 2000 or JPEG decode)
    shifted: bool = False  # Pillow's JPEG 2000 decoder moved the stored bits to the top of 16 bits


class Deadline:
    """A per-file time budget checked between stages: a clean reason early; the hard limit is the worker pool's kill."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self, stage: str) -> None:
        if time.monotonic() > self.end:
            raise DicomRejected("timeout", f"Processing exceeded {self.seconds:g} s during {stage}; raise ingest_timeout_s or release the file from quarantine on a faster box.")


def ts_name(uid: str) -> str:
    u = UID(uid)
    if uid in EXTRA_TS_NAMES:
        return EXTRA_TS_NAMES[uid]
    return u.name if u.name != uid else f"unknown transfer syntax {uid}"


def not_an_image(ds: Dataset) -> DicomRejected:
    """The refusal of an object without pixel data (a report, a PDF): the box triages images only."""
    try:
        sop = UID(str(ds.get("SOPClassUID", "") or "")).name or "unknown SOP class"
    except Exception:  # a corrupt SOP Class element: the refusal stands, without the name
        sop = "unknown SOP class"
    return DicomRejected("no_pixel_data", f"Not an image ({sop}); the box triages images only. Release it if it must be kept.")


def parse(data: bytes, limits: ReadLimits, images_only: bool = False) -> tuple[Dataset, list[Fix]]:
    """Parse every element (nothing left lazy) and repair what parsing needs: a missing transfer syntax, the character set.

    ``images_only``: an object without pixel data is refused before its
    elements are converted (a third of the files a PACS forwards are reports,
    and they go to quarantine whatever else they hold).
    """
    if len(data) > limits.max_file_bytes:
        raise DicomRejected("file_too_large", f"File is {len(data)} bytes, above ingest_max_file_bytes={limits.max_file_bytes}; raise the limit if this is a genuine image.")
    if len(data) < 16:
        raise DicomRejected("not_dicom", "File is too short to be DICOM; check that the right file was sent.")
    fixes: list[Fix] = []
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except RecursionError:
        raise DicomRejected("too_deep", "Sequences are nested too deeply to parse safely.") from None
    except Exception as exc:  # pydicom raises many kinds on broken input
        raise DicomRejected("unreadable", f"Not readable as DICOM ({type(exc).__name__}); re-export the file from the modality.") from None
    if len(ds._dict) == 0:
        raise DicomRejected("not_dicom", "No DICOM elements found; the file is not DICOM or is empty after its header.")
    fixes += _fix_transfer_syntax(ds, data)
    fixes += _fix_charset(ds)
    if images_only and not any(k in ds for k in PIXEL_KEYWORDS):
        raise not_an_image(ds)
    try:
        fixes += _walk(ds, 0, limits.max_depth)
    except DicomRejected:
        raise
    except RecursionError:
        raise DicomRejected("too_deep", "Sequences are nested too deeply to parse safely.") from None
    except Exception as exc:
        raise DicomRejected("unreadable", f"Element data is corrupt or truncated ({type(exc).__name__}); re-export the file from the modality.") from None
    return ds, fixes


def _fix_transfer_syntax(ds: Dataset, data: bytes) -> list[Fix]:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" in meta and str(meta.TransferSyntaxUID).strip():
        return []
    implicit, little = ds.original_encoding  # what the parser found in the bytes
    if little is False:
        ts = ExplicitVRBigEndian
    else:
        ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.TransferSyntaxUID = ts
    return [Fix("transfer_syntax_missing", f"File meta had no Transfer Syntax UID; set to {ts.name} from the encoding found.", "(0002,0010)")]


def _fix_charset(ds: Dataset) -> list[Fix]:
    """Name a missing or misspelt character set before text is decoded, so Turkish names come through intact."""
    fixes: list[Fix] = []
    raw = ds._dict.get(BaseTag(0x00080005))
    declared = ""
    if raw is not None:
        value = raw.value if isinstance(raw, RawDataElement) else ds.SpecificCharacterSet
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            value = "\\".join(str(v) for v in value)
        declared = (value or "").strip()
        first = declared.split("\\")[0].strip()
        if first.upper() in _CHARSET_ALIASES:
            fixed = _CHARSET_ALIASES[first.upper()]
            _set_charset(ds, fixed)
            fixes.append(Fix("charset_renamed", f"Specific Character Set '{first}' is not a DICOM term; set to '{fixed}'.", "(0008,0005)"))
            return fixes
    if declared:
        return fixes
    sample = b"".join(
        e.value for e in ds._dict.values()
        if isinstance(e, RawDataElement) and e.VR in TEXT_VRS and isinstance(e.value, bytes)
    )
    if sample.isascii():
        return fixes
    try:
        sample.decode("utf-8")
        guess = "ISO_IR 192"
    except UnicodeDecodeError:
        guess = "ISO_IR 148" if any(b in _TURKISH_BYTES for b in sample) else "ISO_IR 100"
    _set_charset(ds, guess)
    fixes.append(Fix("charset_missing", f"Text has non-ASCII bytes but no Specific Character Set; assumed '{guess}'.", "(0008,0005)"))
    return fixes


def _set_charset(ds: Dataset, value: str) -> None:
    """Declare the character set and make pydicom decode the still-raw text with it (it caches the one read)."""
    if 0x00080005 in ds._dict:
        del ds[0x00080005]
    ds.SpecificCharacterSet = value
    ds._read_charset = convert_encodings(value)  # pydicom 3 prefers the charset seen at read time


def _walk(ds: Dataset, depth: int, max_depth: int) -> list[Fix]:
    """Convert every raw element now (so truncation shows here, not later) and bound the nesting depth."""
    if depth > max_depth:
        raise DicomRejected("too_deep", f"Sequences nest deeper than ingest_max_depth={max_depth}; this is not a normal image header.")
    fixes: list[Fix] = []
    for tag in list(ds._dict):
        raw = ds._dict[tag]
        if isinstance(raw, RawDataElement) and raw.VR == "UN" and not tag.is_private and tag.element != 0:
            try:
                known = dictionary_VR(tag)
            except KeyError:
                known = "UN"
            if known not in ("UN", "") and " or " not in known:
                fixes.append(Fix("vr_un_resolved", f"Element {tag} was sent as UN; read with its dictionary VR {known}.", str(tag)))
        elem = ds[tag]  # read() has warnings off: pydicom warns on each oddity of broken input
        if elem.VR == "SQ" and elem.value is not None:
            for item in elem.value:
                fixes += _walk(item, depth + 1, max_depth)
    return fixes


def _int(ds: Dataset, keyword: str, default: int = 0) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DicomRejected("bad_dimensions", f"{keyword} is not a number; the image header is corrupt, re-export from the modality.") from None


def check_and_decode(ds: Dataset, limits: ReadLimits, deadline: Deadline) -> np.ndarray | None:
    """Check the declared size and the transfer syntax, then decode; None for objects without pixels."""
    if not any(k in ds for k in PIXEL_KEYWORDS):
        return None
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    frames = _int(ds, "NumberOfFrames", 1) or 1
    samples = _int(ds, "SamplesPerPixel", 1) or 1
    bits = _int(ds, "BitsAllocated", 0)
    if rows <= 0 or cols <= 0 or frames <= 0 or samples not in (1, 3, 4) or bits not in (1, 8, 16, 32, 64):
        raise DicomRejected("bad_dimensions", f"Declared image geometry is invalid (rows={rows}, columns={cols}, frames={frames}, samples={samples}, bits={bits}); re-export from the modality.")
    pixels = rows * cols * frames * samples
    if pixels > limits.max_pixels:
        raise DicomRejected("image_too_large", f"Declared image has {pixels} pixel values ({rows}x{cols}x{frames}x{samples}), above ingest_max_pixels={limits.max_pixels}; raise the limit if the image is genuine.")
    ts = str(ds.file_meta.TransferSyntaxUID)
    name = ts_name(ts)
    if not UID(ts).is_transfer_syntax or ts in EXTRA_TS_NAMES:
        raise DicomRejected("unsupported_transfer_syntax", f"Transfer syntax {name} ({ts}) cannot be decoded on this box; ask the modality to send JPEG 2000, JPEG-LS or uncompressed.")
    if "PixelData" not in ds:
        raise DicomRejected("unsupported_pixel_format", "Float pixel data is not a projection image this box can triage.")
    if not UID(ts).is_compressed:
        expected = (pixels * bits + 7) // 8
        if len(ds.PixelData or b"") < expected:
            raise DicomRejected("truncated_pixel_data", f"Pixel data holds {len(ds.PixelData or b'')} bytes but the header declares {expected}; the transfer was cut short, send it again.")
    else:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            raise DicomRejected("unsupported_transfer_syntax", f"No decoder installed for {name} ({ts}); install pylibjpeg plugins or ask the modality for another syntax.")
    deadline.check("pixel check")
    reduced = _reduced_for_checks(ds, ts, rows, cols, frames)
    if reduced is not None:
        deadline.check("pixel decode")
        return reduced
    # The checks need one frame (the burned-in look and the side of the breast read the first): decode only that.
    # MONOCHROME1 stays as stored; the checks take its polarity. No colour conversion: the first channel of YBR
    # is luminance, which is what text detection wants.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr, _ = get_decoder(ts).as_array(ds, index=None if frames == 1 else 0, raw=True)
    except MemoryError:
        raise DicomRejected("image_too_large", "Not enough memory to decode this image; lower the load or raise memory.") from None
    except Exception as exc:
        raise DicomRejected("pixel_decode_failed", f"{name} pixel data could not be decoded ({type(exc).__name__}); the data is corrupt or uses a vendor-private compression.") from None
    deadline.check("pixel decode")
    return arr


def _reduced_for_checks(ds: Dataset, ts: str, rows: int, cols: int, frames: int) -> np.ndarray | None:
    """The first frame of a large greyscale JPEG 2000 or JPEG baseline image at about the size the checks read, or None.

    The checks (burned-in text, the side of the breast) read at most
    ``CHECK_SIDE`` pixels a side. JPEG 2000 carries its lower resolutions and
    JPEG baseline can be decoded at 1/2, 1/4, 1/8 scale (DCT scaling); Pillow
    decodes either straight at that size, 3-5 times faster than a full
    decode. Pillow moves JPEG 2000's stored bits to the top of 16 bits, which
    neither check minds (both scale to the image's own range). None (decode in
    full) when the image is small, signed or colour, or when Pillow cannot
    decode this stream that way.
    """
    if (ts not in _REDUCIBLE or max(rows, cols) <= CHECK_SIDE or _int(ds, "SamplesPerPixel", 1) != 1
            or _int(ds, "PixelRepresentation", 0) != 0 or _int(ds, "BitsAllocated", 0) not in (8, 16)):
        return None
    from PIL import Image, Jpeg2KImagePlugin, JpegImagePlugin

    level = math.ceil(math.log2(max(rows, cols) / CHECK_SIDE))
    f = 1 << min(level, 3) if ts == JPEGBaseline8Bit else 1 << level
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
        with Image.open(io.BytesIO(frame)) as im:
            if ts == JPEGBaseline8Bit and isinstance(im, JpegImagePlugin.JpegImageFile) and im.mode == "L":
                im.draft("L", (cols // f, rows // f))  # Pillow scales by the largest 1/2^n that keeps this size
            elif ts != JPEGBaseline8Bit and isinstance(im, Jpeg2KImagePlugin.Jpeg2KImageFile):
                im.reduce = level
            else:
                return None
            im.load()
            arr = np.asarray(im)
    except Exception:  # fewer levels than that, or a stream Pillow reads differently: the full decode decides
        return None
    return arr if arr.ndim == 2 and arr.shape == (-(-rows // f), -(-cols // f)) else None


def read(data: bytes, limits: ReadLimits, deadline: Deadline | None = None, images_only: bool = False) -> Decoded:
    """Parse, check and decode one file; raises DicomRejected with a reason code.

    The deadline is checked between stages; a decode that never returns is
    ended by the worker pool, which kills the process. ``images_only``
    refuses an object without pixel data at once (``no_pixel_data``).
    """
    deadline = deadline or Deadline(limits.timeout_s)
    # pydicom warns about every oddity of broken input; those are handled as fixes or rejections here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds, fixes = parse(data, limits, images_only)
        fixes += fix_frames(ds)
        deadline.check("parse")
        pixels = check_and_decode(ds, limits, deadline)
    ts = str(ds.file_meta.TransferSyntaxUID)
    factor = _factor_of(ds, pixels)
    return Decoded(ds, pixels, tuple(fixes), ts, factor, factor > 1 and ts in (JPEG2000Lossless, JPEG2000))


def _factor_of(ds: Dataset, pixels: np.ndarray | None) -> int:
    """How much smaller than stored the decoded first frame is (1: full size; 0: it is not a reduction of it)."""
    if pixels is None or pixels.ndim < 2:
        return 0
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    h, w = pixels.shape[:2]
    if (h, w) == (rows, cols):
        return 1
    f = 1 << max(0, round(math.log2(rows / h))) if h else 0
    return f if f and (-(-rows // f), -(-cols // f)) == (h, w) else 0


def fix_frames(ds: Dataset) -> list[Fix]:
    """A non-numeric NumberOfFrames is recomputed from the native pixel data length when that divides exactly."""
    if "NumberOfFrames" not in ds:
        return []
    try:
        int(ds.NumberOfFrames)
        return []
    except (TypeError, ValueError):
        pass
    try:
        frame_bytes = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated) // 8
        n = len(ds.PixelData) // frame_bytes if frame_bytes else 0
        ok = not UID(ds.file_meta.TransferSyntaxUID).is_compressed and n >= 1 and n * frame_bytes == len(ds.PixelData)
    except Exception:
        ok = False
    if not ok:
        return []
    del ds["NumberOfFrames"]
    ds.NumberOfFrames = n
    return [Fix("frames_invalid", f"NumberOfFrames was not a number; set to {n} from the pixel data length.", "NumberOfFrames")]


UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def valid_uid(value: object) -> bool:
    s = str(value or "")
    return 0 < len(s) <= 64 and bool(UID_RE.match(s))
