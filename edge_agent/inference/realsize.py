"""Real-size synthetic screening studies, for ``mammo bench study`` and the tests.

A detector mammogram is 3000-4700 x 2300-3300 pixels at 12-16 bits, usually
sent RLE or JPEG 2000 compressed; the 256-1024 px squares used elsewhere hide
what such an image costs. These are drawn by :mod:`models.synthetic` at a
quarter of the height, scaled up and given detector-like quantum noise (so
that they compress like real images rather than like smooth drawings), then
cut to the portrait shape of a detector with the chest wall kept.

Always labelled synthetic (DerivationDescription), never a patient image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.uid import UID, JPEG2000Lossless, RLELossless

from edge_agent.ingest import mg

#: A common full-field detector: 3328 wide x 4096 high, 14 bits stored in 16.
WIDTH, HEIGHT, BITS = 3328, 4096, 14

#: The four views of a study by (laterality, view): pixels, and their pixel data encoded in one syntax.
Views = dict[tuple[str, str], tuple[np.ndarray, bytes]]

#: Transfer syntaxes the benchmark sends, by the name it reports.
SYNTAXES: dict[str, UID | None] = {"native": None, "rle": RLELossless, "j2k": JPEG2000Lossless}


def j2k_encoding_available() -> bool:
    """Whether pydicom can encode JPEG 2000 here (pylibjpeg-openjpeg's encoder)."""
    from pydicom.pixels.encoders.base import get_encoder

    return bool(get_encoder(JPEG2000Lossless).is_available)


def pixels(seed: int, laterality: str, width: int = WIDTH, height: int = HEIGHT, bits: int = BITS) -> np.ndarray:
    """One real-size view (height x width uint16, ``bits`` significant), chest wall left for L, right for R."""
    from models.synthetic import generate

    side = max(height, width)
    base = generate(seed, density="C", size=max(side // 4, 64), laterality=laterality, bit_depth=bits).image
    big = np.asarray(Image.fromarray(base.astype(np.float32), "F").resize((side, side), Image.Resampling.BILINEAR))
    top = (side - height) // 2
    big = big[top : top + height, :width] if laterality == "L" else big[top : top + height, side - width :]
    noise = np.random.default_rng(seed).normal(0.0, (1 << bits) / 400.0, big.shape).astype(np.float32)
    out = np.clip(big + noise, 0, (1 << bits) - 1).astype(np.uint16)
    return out


def encode(image: np.ndarray, syntax: UID | None, bits: int = BITS) -> bytes:
    """The encapsulated pixel data of ``image`` in ``syntax`` (None, native: nothing, the instance carries the pixels)."""
    if syntax is None:
        return b""
    ds = mg.mammogram(image, patient=mg.fake_patient(0), laterality="L", view="CC")
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.compress(syntax, encoding_plugin="pylibjpeg")
    return bytes(ds.PixelData)


def instance(image: np.ndarray, encoded: bytes, syntax: UID | None, *, patient: mg.FakePatient, laterality: str, view: str,
             study_uid: str, instance_number: int, bits: int = BITS) -> Dataset:
    """A Digital Mammography object around already-encoded pixel data (encoding once serves many studies)."""
    ds = mg.mammogram(image, patient=patient, laterality=laterality, view=view, study_uid=study_uid,
                      instance_number=instance_number)
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.WindowCenter, ds.WindowWidth = str(1 << (bits - 1)), str(1 << bits)
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encoded
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    return ds


def study(views: Views, syntax: UID | None, *, patient: mg.FakePatient,
          study_uid: str) -> list[Dataset]:
    """The four screening views of one woman from pre-encoded ``views`` keyed by (laterality, view)."""
    return [instance(img, enc, syntax, patient=patient, laterality=lat, view=view, study_uid=study_uid, instance_number=i + 1)
            for i, (lat, view) in enumerate(mg.SCREENING_VIEWS) for img, enc in [views[(lat, view)]]]
