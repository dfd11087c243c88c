"""One file through the pure part of ingest: read, check, fix and de-identify; no storage, no database.

An ingest worker process (``pool``) runs ``prepare`` on every file; the
parent only stores what comes back. ``mammo deid`` and the tests run the
same code in process through ``process``. Nothing here opens the box
database or holds the master key: a worker gets ``Options`` (limits and the
derived de-identification secrets) when it starts, and nothing else.

What crosses the process boundary is small and plain: a ``Request`` (bytes
or a path), and back either ``Prepared`` (the de-identified file plus the
few facts the parent records) or ``Refused`` (a reason code for the
quarantine). A pydicom ``Dataset`` never crosses it.
"""

from __future__ import annotations

import io
import logging
import threading
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from edge_agent.errors import DicomRejected, StoreError
from edge_agent.ingest import autofix, burned_in, deid, reader
from edge_agent.ingest.image_store import sha256
from edge_agent.ingest.records import Fix

if TYPE_CHECKING:
    from models.preprocess import WorkImage

log = logging.getLogger(__name__)

IMPLEMENTATION_VERSION = "MAMMO_EDGE_1"
# warnings.catch_warnings swaps process-wide state (Python 3.11): in process, one file at a time.
# A worker process ignores warnings once, at start, and needs no lock.
_IN_PROCESS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Options:
    """Everything a worker needs for every file, given once at start: limits, policy and the derived secrets."""

    limits: reader.ReadLimits
    keys: deid.DeidKeys
    quarantine_burned_in: bool = True
    private_safelist: frozenset[tuple[str, int, int]] = frozenset()


@dataclass(frozen=True)
class Request:
    """One file to prepare: its bytes, or a path the worker reads itself (a spooled C-STORE, a dropped file)."""

    data: bytes | None = None
    path: str | None = None
    allow: frozenset[str] = frozenset()
    work_size: int | None = None  # a mammogram's work image for this model input size comes back too (see work_images)


@dataclass(frozen=True)
class InstanceFacts:
    """What the parent records about a stored instance; de-identified UIDs only."""

    study_uid: str
    sop_uid: str
    series_uid: str
    sop_class: str
    modality: str
    laterality: str
    view: str


@dataclass(frozen=True)
class Prepared:
    """A file ready to store: the de-identified DICOM file, its facts, the identity for the sealed map, the fixes."""

    data: bytes
    facts: InstanceFacts
    identity: deid.Identity
    fixes: tuple[Fix, ...]
    work: WorkImage | None = None  # the decoded pixels reduced for inference at ``work_size`` (decode once)
    work_size: int | None = None


@dataclass(frozen=True)
class Refused:
    """A file for the quarantine, with its reason code and the fixes made before it was refused."""

    reason_code: str
    reason: str
    fixes: tuple[Fix, ...] = ()


@dataclass(frozen=True)
class Unreadable:
    """The input itself could not be read (a path that vanished): the caller's problem, not the file's."""

    message: str


@dataclass(frozen=True)
class Processed:
    """The in-process result (``mammo deid``, tests): the dataset too, and the full de-identification report."""

    ds: Dataset
    data: bytes
    report: deid.DeidReport
    fixes: tuple[Fix, ...]
    work: WorkImage | None = None


def serialize(ds: Dataset) -> bytes:
    """The de-identified object as a DICOM file, with file meta rebuilt from the (remapped) dataset."""
    ts = UID(str(ds.file_meta.TransferSyntaxUID)) if "TransferSyntaxUID" in ds.file_meta else ExplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    for tag in [t for t in ds.keys() if t.group == 0x0000 or t.element == 0x0000]:
        del ds[tag]  # command and group-length elements do not belong in a stored object
    # The sender's 128-byte preamble is free-form (a TIFF header, a vendor's text) and may name the patient: zeros.
    ds.preamble = None
    if ts == DeflatedExplicitVRLittleEndian or ts.is_private or not ts.is_transfer_syntax:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    # What save_as(enforce_file_format=True) writes for a public syntax, without its defensive deep copy and second
    # validation of the file meta just built here (write_file_meta_info validates it): the same bytes.
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = ts.is_implicit_VR, ts.is_little_endian
    fp.write(b"\x00" * 128)
    fp.write(b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    if "PixelData" in ds:
        ds["PixelData"].is_undefined_length = ts.is_compressed
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def facts_of(ds: Dataset) -> InstanceFacts:
    modality = str(ds.get("Modality", "") or "OT").upper()
    mg = modality == "MG"
    return InstanceFacts(
        study_uid=str(ds.StudyInstanceUID), sop_uid=str(ds.SOPInstanceUID), series_uid=str(ds.SeriesInstanceUID),
        sop_class=str(ds.SOPClassUID), modality=modality,
        laterality=str(ds.get("ImageLaterality", "") or "").upper() if mg else "",
        view=str(ds.get("ViewPosition", "") or "").upper() if mg else "",
    )


def work_image_of(decoded: reader.Decoded, ds: Dataset, size: int) -> WorkImage | None:
    """The model's work image from the pixels the checks decoded, for a mammogram; None when there is none to give.

    Never a reason to refuse a file: whatever goes wrong here, inference
    decodes the stored view itself, as it always could.
    """
    if decoded.pixels is None or decoded.factor < 1 or str(ds.get("Modality", "") or "").upper() != "MG":
        return None
    from edge_agent.inference.decode import work_from_pixels

    try:
        return work_from_pixels(decoded.pixels, decoded.factor, ds, size, shifted=decoded.shifted)
    except Exception as exc:  # an odd image the model may refuse too: its job will say so
        log.debug("no work image handed to inference (%s)", type(exc).__name__)
        return None


def _run(data: bytes, options: Options, allow: frozenset[str], work_size: int | None = None) -> Processed | Refused:
    """Read, fix, check and de-identify one file; a refusal comes back with the fixes made so far. Warnings must already be off."""
    limits = options.limits
    fixes: list[Fix] = []
    deadline = reader.Deadline(limits.timeout_s)
    try:
        decoded = reader.read(data, limits, deadline, images_only="no_pixel_data" not in allow)
        ds, fixes = decoded.ds, list(decoded.fixes)
        if decoded.pixels is None and "no_pixel_data" not in allow:
            raise reader.not_an_image(ds)
        more = autofix.apply_all(ds, decoded.pixels, lambda: sha256(data))  # hashed only to seed a missing SOP Instance UID
        fixes = autofix.summarise(fixes + more)
        check_burned_in = options.quarantine_burned_in
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES" and check_burned_in and "burned_in_annotation" not in allow:
            raise DicomRejected("burned_in_annotation", "BurnedInAnnotation=YES: text may be burned into the pixels. Review the image; release it if the text identifies no one.")
        burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
        if (decoded.pixels is not None and burned != "NO" and check_burned_in
                and "burned_in_text_suspected" not in allow and burned_in.suspect_text(decoded.pixels, dense_dark=autofix.dense_is_dark(ds))):
            raise DicomRejected("burned_in_text_suspected", "The image seems to carry a line of text in its pixels and does not declare BurnedInAnnotation=NO. Review it; release it if the text identifies no one.")
        deadline.check("auto-fix")
        report = deid.deidentify(ds, options.keys, private_safelist=options.private_safelist)
        deadline.check("de-identification")
        work = work_image_of(decoded, ds, work_size) if work_size else None
        del decoded  # the decoded pixels (27 MB for a detector image) are not held while the file is written
        try:
            out = serialize(ds)
        except Exception as exc:
            raise DicomRejected("unwritable", f"The repaired object cannot be written as DICOM ({type(exc).__name__}); re-export it from the modality.") from None
    except DicomRejected as exc:
        return Refused(exc.reason_code, str(exc), tuple(fixes))
    except (StoreError, MemoryError):
        raise
    except Exception as exc:  # a bug or an unforeseen file: never crash the receiver, keep the file
        # Frames only: an exception's message may quote a header value, and a value may be a name.
        log.error("unexpected %s while processing a DICOM object; the file is quarantined:\n%s",
                  type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)))
        return Refused("internal_error", f"Unexpected {type(exc).__name__} while processing; the file is kept. Report it with `mammo quarantine show`.", tuple(fixes))
    return Processed(ds, out, report, tuple(fixes), work)


def process(
    data: bytes,
    *,
    limits: reader.ReadLimits,
    keys: deid.DeidKeys,
    quarantine_burned_in: bool = True,
    allow: frozenset[str] = frozenset(),
    private_safelist: frozenset[tuple[str, int, int]] = frozenset(),
) -> Processed:
    """In process, one file at a time: raises DicomRejected when refused.

    The time budget is only checked between stages here; the hard limit needs a worker process (``pool``).
    """
    options = Options(limits, keys, quarantine_burned_in, private_safelist)
    with _IN_PROCESS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = _run(data, options, allow)
    if isinstance(result, Refused):
        raise DicomRejected(result.reason_code, result.reason)
    return result


def prepare(request: Request, options: Options) -> Prepared | Refused | Unreadable:
    """The worker's function: a file's fault comes back as ``Refused``; it raises only for the box's own failures."""
    if request.data is not None:
        data = request.data
    else:
        try:
            data = Path(str(request.path)).read_bytes()
        except OSError as exc:
            return Unreadable(f"Cannot read the file: {exc.strerror}. Check that it exists and is readable.")
    try:
        p = _run(data, options, request.allow, request.work_size)
    except MemoryError:
        return Refused("image_too_large", "Not enough memory to process this file; lower the load or raise memory, then release it.")
    if isinstance(p, Refused):
        return p
    return Prepared(p.data, facts_of(p.ds), p.report.identity, p.fixes, p.work, request.work_size if p.work is not None else None)


def prepare_in_process(request: Request, options: Options) -> Prepared | Refused | Unreadable:
    """``prepare`` without a worker (tests, tools): warnings switched off under the in-process lock."""
    with _IN_PROCESS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare(request, options)
