"""Synthetic mammograms with ground truth -- ALWAYS labelled synthetic.

Used for tests (they run without the research-licensed images), demos,
DICOM-ingest fixtures, and as an optional pretraining task. They are not
realistic enough to measure a model on, and nothing here may ever be reported
as a clinical figure.

What is drawn, and why it matters for the tests:

* breast outline (half-ellipse from the chest wall) with a skin line and a
  thickness fall-off toward the edge, so masking and side detection have
  something real to find;
* a pectoral muscle wedge at the top of the chest wall (MLO-like view);
* fibroglandular texture whose dense fraction follows BI-RADS density A-D;
* optionally one finding with its ground-truth mask: a circumscribed mass
  (benign), a spiculated mass (malignant) or a calcification cluster
  (malignant);
* a bright film marker outside the breast, which preprocessing must ignore.

Convention (as in mini-MIAS): a LEFT breast has its chest wall on the left of
the image, a RIGHT breast on the right.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["SyntheticMammogram", "generate", "DENSITIES", "FINDINGS"]

DENSITIES = ("A", "B", "C", "D")
FINDINGS = (None, "mass", "spiculated", "calcification")
_DENSE_FRACTION = {"A": 0.08, "B": 0.25, "C": 0.5, "D": 0.75}
_MALIGNANT = {"mass": False, "spiculated": True, "calcification": True}


@dataclass(frozen=True)
class SyntheticMammogram:
    """One synthetic image and its truth. ``synthetic`` is always True."""

    image: np.ndarray  # (H, W) uint8 (or uint16 for bit_depth > 8)
    mask: np.ndarray  # (H, W) bool, the finding's pixels (all False when normal)
    breast_mask: np.ndarray  # (H, W) bool
    laterality: str  # "L" or "R"
    density: str  # BI-RADS A-D
    finding: str | None
    abnormal: bool
    malignant: bool
    lesion: tuple[float, float, float] | None  # (x, y, radius) in pixels, y from the top
    seed: int
    synthetic: bool = True

    @property
    def label(self) -> str:
        """"normal", "benign" or "malignant" -- prefixed nowhere, but see ``synthetic``."""
        if not self.abnormal:
            return "normal"
        return "malignant" if self.malignant else "benign"


def _smooth_noise(rng, shape, sigma):
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (n - n.mean()) / (n.std() + 1e-6)


def _line(canvas, x0, y0, x1, y1, value, width=1.0):
    """Anti-aliased-ish thick line by dense sampling (small images, few lines)."""
    n = int(max(abs(x1 - x0), abs(y1 - y0)) * 2) + 2
    xs, ys = np.linspace(x0, x1, n), np.linspace(y0, y1, n)
    h, w = canvas.shape
    r = int(np.ceil(width))
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dx * dx + dy * dy > width * width:
                continue
            yi = np.clip(np.round(ys + dy).astype(int), 0, h - 1)
            xi = np.clip(np.round(xs + dx).astype(int), 0, w - 1)
            canvas[yi, xi] = np.maximum(canvas[yi, xi], value)


def generate(
    seed: int,
    density: str = "B",
    finding: str | None = None,
    size: int = 512,
    laterality: str | None = None,
    bit_depth: int = 8,
) -> SyntheticMammogram:
    """Draw one synthetic mammogram, deterministic in ``seed``.

    ``density`` is BI-RADS A-D; ``finding`` one of None, "mass", "spiculated",
    "calcification"; ``laterality`` "L"/"R" (random from the seed if None);
    ``bit_depth`` 8 gives uint8, 10-16 give uint16 scaled to that range.
    """
    if density not in DENSITIES:
        raise ValueError(f"density must be one of {DENSITIES}, got {density!r}")
    if finding not in FINDINGS:
        raise ValueError(f"finding must be one of {FINDINGS}, got {finding!r}")
    if not 8 <= bit_depth <= 16:
        raise ValueError(f"bit_depth must be 8..16, got {bit_depth}")
    rng = np.random.default_rng(seed)
    lat = laterality or ("L" if rng.random() < 0.5 else "R")
    if lat not in ("L", "R"):
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # --- breast outline, chest wall at x = 0 (mirrored at the end for R) ---
    a = w * rng.uniform(0.5, 0.7)
    b = h * rng.uniform(0.38, 0.46)
    cy = h * rng.uniform(0.5, 0.58)
    ang = np.arctan2(yy - cy, xx + 1e-3)
    wobble = 1 + 0.03 * np.sin(3 * ang + rng.uniform(0, 6.28)) + 0.02 * np.sin(5 * ang)
    rr = np.sqrt((xx / a) ** 2 + ((yy - cy) / b) ** 2) / wobble
    breast = rr <= 1.0
    thickness = np.sqrt(np.clip(1 - rr**2, 0, 1))
    img = 0.28 + 0.22 * thickness  # fat

    # --- fibroglandular tissue by density, concentrated behind the nipple ---
    frac = _DENSE_FRACTION[density]
    tex = 0.6 * _smooth_noise(rng, (h, w), size / 40) + 0.4 * _smooth_noise(rng, (h, w), size / 120)
    centre_bias = np.exp(-(((xx - 0.35 * a) / (0.5 * a)) ** 2 + ((yy - cy) / (0.7 * b)) ** 2))
    field = tex + 1.5 * centre_bias
    thr = np.quantile(field[breast], 1 - frac)
    gland = ndimage.gaussian_filter((field > thr).astype(np.float32), size / 256)
    img = img + 0.28 * gland * thickness
    # fine structure (ducts, trabeculae)
    img = img + 0.03 * _smooth_noise(rng, (h, w), 1.2) * breast

    # --- pectoral muscle: wedge in the upper chest-wall corner ---
    pw, ph = w * rng.uniform(0.12, 0.22), h * rng.uniform(0.3, 0.45)
    pect = (xx / pw + yy / ph) < 1.0
    img = np.where(pect & breast, 0.78 + 0.05 * _smooth_noise(rng, (h, w), 6), img)

    # --- skin line ---
    img = np.where((rr > 0.975) & breast, img + 0.08, img)

    # --- the finding ---
    lesion_mask = np.zeros((h, w), bool)
    lesion = None
    if finding is not None:
        inside = breast & ~pect & (rr < 0.8) & (xx > 0.15 * a)
        ys, xs = np.nonzero(inside)
        k = rng.integers(len(ys))
        ly, lx = float(ys[k]), float(xs[k])
        if finding in ("mass", "spiculated"):
            r = size * rng.uniform(0.025, 0.05)
            sa, sb, th = r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2), rng.uniform(0, np.pi)
            dx, dy = xx - lx, yy - ly
            u = (dx * np.cos(th) + dy * np.sin(th)) / sa
            v = (-dx * np.sin(th) + dy * np.cos(th)) / sb
            d = np.sqrt(u**2 + v**2)
            lesion_mask = d <= 1.0
            edge = 0.5 if finding == "mass" else 2.0
            body = 1.0 / (1.0 + np.exp(np.clip((d - 1.0) * size / (20 * edge), -50, 50)))
            img = img + 0.22 * body
            radius = r * 1.2
            if finding == "spiculated":
                spic = np.zeros((h, w), np.float32)
                for t in rng.uniform(0, 2 * np.pi, rng.integers(8, 16)):
                    ln = r * rng.uniform(1.8, 3.0)
                    _line(spic, lx, ly, lx + ln * np.cos(t), ly + ln * np.sin(t), 1.0, 0.8)
                spic = ndimage.gaussian_filter(spic, 0.7)
                img = img + 0.14 * spic
                lesion_mask |= spic > 0.25
                radius = r * 2.5
        else:  # calcification cluster: 5-15 tiny bright specks
            cr = size * rng.uniform(0.015, 0.03)
            for _ in range(rng.integers(5, 16)):
                px, py = lx + rng.normal(0, cr / 2), ly + rng.normal(0, cr / 2)
                pr = rng.uniform(0.6, 1.6) * size / 512
                dot = (xx - px) ** 2 + (yy - py) ** 2 <= pr**2
                img = np.where(dot, np.maximum(img, 0.95), img)
                lesion_mask |= ndimage.binary_dilation(dot, iterations=1)
            radius = cr * 1.5
        lesion_mask &= breast
        if lesion_mask.any():  # the circle must cover every lesion pixel (spicules, strays)
            ys_m, xs_m = np.nonzero(lesion_mask)
            radius = max(radius, float(np.hypot(xs_m - lx, ys_m - ly).max()) + 1.0)
        lesion = (lx, ly, float(radius))

    # --- outside the breast: film base, grain, and a marker to be ignored ---
    img = np.where(breast, img, 0.02)
    img = img + 0.01 * rng.standard_normal((h, w)).astype(np.float32)
    mx0, my0 = int(w * 0.8), int(h * rng.uniform(0.05, 0.25))
    img[my0 : my0 + h // 16, mx0 : mx0 + w // 12] = 0.9

    img = np.clip(img, 0, 1)
    breast_m = breast.copy()
    if lat == "R":
        img, lesion_mask, breast_m = img[:, ::-1], lesion_mask[:, ::-1], breast_m[:, ::-1]
        if lesion is not None:
            lesion = (w - 1 - lesion[0], lesion[1], lesion[2])
    maxval = (1 << bit_depth) - 1
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    out = np.round(img * maxval).astype(dtype)
    return SyntheticMammogram(
        image=np.ascontiguousarray(out),
        mask=np.ascontiguousarray(lesion_mask),
        breast_mask=np.ascontiguousarray(breast_m),
        laterality=lat,
        density=density,
        finding=finding,
        abnormal=finding is not None,
        malignant=bool(finding is not None and _MALIGNANT[finding]),
        lesion=lesion,
        seed=seed,
    )
