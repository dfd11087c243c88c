"""Burned-in text detection: a written name is found; breast tissue and laterality markers are not text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from edge_agent.ingest import mg
from edge_agent.ingest.burned_in import suspect_text, text_line_length

MIAS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mias"


def _write(pixels: np.ndarray, text: str) -> np.ndarray:
    img = Image.fromarray(pixels)
    size = img.size[0]
    ImageDraw.Draw(img).text((size * 0.55, size * 0.05), text, fill=255, font=ImageFont.load_default(size=max(11, size // 40)))
    return np.asarray(img)


@pytest.mark.parametrize("size", [256, 512, 2048])
def test_a_written_name_is_found_at_any_resolution(size):
    clean = mg.synthetic_pixels(3, "L", size)
    assert not suspect_text(clean)
    assert suspect_text(_write(clean, "CELIK AYSE 38291047562"))


def test_a_laterality_marker_is_not_enough():
    assert not suspect_text(_write(mg.synthetic_pixels(4, "L", 512), "L MLO"))


def test_sixteen_bit_images_are_handled():
    pixels = mg.synthetic_pixels(5, "R", 512).astype(np.uint16) * 16
    assert text_line_length(pixels) == 0


@pytest.mark.shared_data
def test_mini_mias_films_are_not_flagged():
    if not (MIAS / "images").is_dir():
        pytest.skip(f"mini-MIAS not found at {MIAS} (shared data beside the checkout)")
    for path in sorted((MIAS / "images").glob("mdb*.png"))[:40]:
        with Image.open(path) as im:
            assert not suspect_text(np.asarray(im.convert("L"))), path.name


@pytest.mark.parametrize("size", [512, 2048])
def test_monochrome1_text_is_found_in_the_stored_polarity(size):
    """MONOCHROME1 is kept as sent: the text shown white is stored dark, and the look must see it all the same."""
    clean = mg.synthetic_pixels(3, "L", size)
    texted = _write(clean, "CELIK AYSE 38291047562")
    for top, scale in ((255, 1), (4095, 16)):  # 8 bits, and 12 bits stored in 16
        as_sent = (top - texted.astype(np.uint16) * scale).astype(np.uint16 if top > 255 else np.uint8)
        assert text_line_length(as_sent, dense_dark=True) == text_line_length(texted) >= 6
        assert suspect_text(as_sent, dense_dark=True)
        assert not suspect_text((top - clean.astype(np.uint16) * scale).astype(as_sent.dtype), dense_dark=True)


def _large_image_file(pixels: np.ndarray, syntax: str, photometric: str) -> bytes:
    """A 2048 px view as JPEG 2000 (12 bits stored) or 8-bit JPEG baseline, in the polarity given."""
    import io

    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    from edge_agent.inference import realsize

    bits = 12 if syntax == "j2k" else 8
    stored = pixels.astype(np.uint16) * 16 if bits == 12 else pixels.copy()
    if photometric == "MONOCHROME1":
        stored = ((1 << bits) - 1 - stored).astype(stored.dtype)
    if syntax == "j2k":
        ts, encoded = realsize.SYNTAXES["j2k"], realsize.encode(stored, realsize.SYNTAXES["j2k"], bits)
    else:
        buf = io.BytesIO()
        Image.fromarray(stored.astype(np.uint8)).save(buf, format="JPEG", quality=95)
        ts, encoded = JPEGBaseline8Bit, encapsulate([buf.getvalue()])
    ds = realsize.instance(stored, encoded, ts, patient=mg.fake_patient(6), laterality="L", view="CC",
                           study_uid="1.2.826.0.1.3680043.8.498.6", instance_number=1, bits=bits)
    ds.PhotometricInterpretation = photometric
    return mg.to_bytes(ds)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("syntax", ["j2k", "jpeg"])
def test_text_in_a_large_compressed_image_is_found_at_the_reduced_size_the_checks_read(syntax, photometric):
    from edge_agent.inference import realsize
    from edge_agent.ingest.reader import ReadLimits, read

    if syntax == "j2k" and not realsize.j2k_encoding_available():
        pytest.skip("no JPEG 2000 encoder here (pylibjpeg-openjpeg) to make the test file")
    clean = mg.synthetic_pixels(6, "L", 2048)
    for pixels, has_text in ((clean, False), (_write(clean, "CELIK AYSE 38291047562"), True)):
        decoded = read(_large_image_file(pixels, syntax, photometric), ReadLimits())
        assert decoded.pixels.shape == (1024, 1024)  # decoded at half size, never in full
        assert suspect_text(decoded.pixels, dense_dark=photometric == "MONOCHROME1") is has_text
