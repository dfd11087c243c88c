"""Benchmarks behind ``mammo bench ...``: our figure beside a named peer's, from one run."""

from __future__ import annotations

import numpy as np


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation; 0.0 for no values."""
    return float(np.percentile(values, q)) if values else 0.0
