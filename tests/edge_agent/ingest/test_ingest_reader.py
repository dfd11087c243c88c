"""Defensive reading: limits hold before any pixel is decoded, and every common transfer syntax decodes."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from edge_agent.errors import DicomRejected
from edge_agent.ingest import mg
from edge_agent.ingest.reader import ReadLimits, read


def _bytes(ds: Dataset, **kw) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, **kw)
    return buf.getvalue()


def _mg(size: int = 32) -> Dataset:
    return mg.mammogram(mg.fallback_pixels(0, "L", size), patient=mg.TURKISH_PATIENTS[0], laterality="L", view="CC")


def _reason(data: bytes, **limits) -> str:
    with pytest.raises(DicomRejected) as info:
        read(data, ReadLimits(**limits))
    return info.value.reason_code


def test_absurd_declared_size_is_refused_before_decoding():
    ds = _mg()
    ds.Rows = ds.Columns = 46341  # 2.1 G pixels declared, 1 KiB present
    start = time.perf_counter()
    assert _reason(_bytes(ds)) == "image_too_large"
    assert time.perf_counter() - start < 5  # nothing was allocated for the declared size


def test_file_over_the_size_limit_is_refused_unparsed():
    assert _reason(_bytes(_mg()), max_file_bytes=100) == "file_too_large"


def test_jpeg_xl_is_quarantined_naming_the_syntax():
    ds = _mg()
    ds.PixelData = encapsulate([b"\xff\x0a" + b"\x00" * 30])
    # pydicom will not write a syntax it does not know: write MPEG2 (same UID length), then swap the UID bytes.
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    data = _bytes(ds).replace(b"1.2.840.10008.1.2.4.100\x00", b"1.2.840.10008.1.2.4.112\x00")
    with pytest.raises(DicomRejected) as info:
        read(data, ReadLimits())
    assert info.value.reason_code == "unsupported_transfer_syntax"
    assert "JPEG XL" in str(info.value)


def test_truncated_pixel_data_is_refused():
    ds = _mg()
    ds.PixelData = ds.PixelData[:100]
    assert _reason(_bytes(ds)) == "truncated_pixel_data"


def test_sequence_bomb_is_refused_by_depth():
    ds = _mg()
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(30):
        outer = Dataset()
        outer.ContentSequence = [inner]
        inner = outer
    ds.ContentSequence = [inner]
    assert _reason(_bytes(ds), max_depth=16) == "too_deep"


def test_garbage_is_not_dicom():
    assert _reason(b"\x00" * 8) == "not_dicom"


@pytest.mark.parametrize("name", [
    "JPEG2000.dcm",                  # JPEG 2000
    "MR_small_jp2klossless.dcm",     # JPEG 2000 lossless
    "MR_small_RLE.dcm",              # RLE
    "MR_small_jpeg_ls_lossless.dcm", # JPEG-LS lossless
    "JPEGLSNearLossless_08.dcm",     # JPEG-LS near-lossless
    "SC_rgb_jpeg_dcmtk.dcm",         # JPEG baseline
    "JPGExtended.dcm",               # JPEG extended 12-bit
    "JPEG-LL.dcm",                   # JPEG lossless (pydicom-data)
    "image_dfl.dcm",                 # deflate
    "MR_small_bigendian.dcm",        # explicit big endian
    "MR_small_implicit.dcm",         # implicit little endian
])
def test_common_transfer_syntaxes_decode(name):
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed locally (needs pydicom-data); never downloaded")
    decoded = read(Path(path).read_bytes(), ReadLimits())
    assert decoded.pixels is not None and decoded.pixels.size > 0
    assert np.isfinite(decoded.pixels.astype(np.float64)).all()


def test_missing_transfer_syntax_is_recovered_and_recorded():
    path = get_testdata_file("no_meta.dcm", download=False)
    decoded = read(Path(path).read_bytes(), ReadLimits())
    assert "transfer_syntax_missing" in {f.code for f in decoded.fixes}


def test_turkish_name_without_charset_is_read_as_latin5():
    ds = _mg()
    del ds.SpecificCharacterSet
    raw = _bytes(mg.mammogram(mg.fallback_pixels(0, "L", 32), patient=mg.TURKISH_PATIENTS[0], laterality="L", view="CC"))
    # Write the same Latin-5 bytes but drop the declaration.
    data = raw.replace(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 148", b"\x08\x00\x05\x00CS\x0a\x00          ")
    assert data != raw
    decoded = read(data, ReadLimits())
    assert str(decoded.ds.PatientName) == "ÇELİK^AYŞE"
    assert "charset_missing" in {f.code for f in decoded.fixes}


def test_pixels_read_back_as_written():
    ds = _mg(64)
    decoded = read(_bytes(ds), ReadLimits())
    assert np.array_equal(decoded.pixels, pydicom.dcmread(io.BytesIO(_bytes(ds))).pixel_array)
