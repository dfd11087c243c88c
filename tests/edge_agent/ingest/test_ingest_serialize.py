"""The stored object is written directly (no defensive copy of the file meta): byte for byte what pydicom's save_as writes."""

from __future__ import annotations

import copy
import io

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from edge_agent.ingest import mg
from edge_agent.ingest.prepare import serialize


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian, RLELossless, DeflatedExplicitVRLittleEndian])
def test_serialize_writes_what_save_as_writes(syntax):
    ds = mg.mammogram(mg.fallback_pixels(0, "L", 64), patient=mg.TURKISH_PATIENTS[0], laterality="L", view="CC")
    if syntax == RLELossless:
        ds.compress(RLELossless)
    elif syntax is not None:
        ds = pydicom.dcmread(io.BytesIO(mg.to_bytes(ds)))
        ds.file_meta.TransferSyntaxUID = syntax
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)  # re-encoded in that syntax, as a modality would send it
        ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    ours = serialize(copy.deepcopy(ds))
    reference = copy.deepcopy(ds)
    serialize(reference)  # the same file meta, then pydicom's own writer
    buf = io.BytesIO()
    reference.save_as(buf, enforce_file_format=True)
    assert ours == buf.getvalue()
    back = pydicom.dcmread(io.BytesIO(ours))
    assert back.file_meta.TransferSyntaxUID == (syntax or ds.file_meta.TransferSyntaxUID) and back.SOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize("syntax", [None, DeflatedExplicitVRLittleEndian])
def test_the_senders_preamble_is_not_stored(syntax):
    # A preamble is free-form (DICOM/TIFF dual files, vendor text) and can carry a name: the stored file has zeros.
    ds = mg.mammogram(mg.fallback_pixels(0, "L", 64), patient=mg.TURKISH_PATIENTS[0], laterality="L", view="CC")
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.preamble = b"YILMAZ^AYSE 12345678901".ljust(128, b" ")
    out = serialize(ds)
    assert out[:132] == b"\x00" * 128 + b"DICM"
