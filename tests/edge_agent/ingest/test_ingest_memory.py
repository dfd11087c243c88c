"""Image-sized buffers leave resident memory when freed, in the daemon and in each ingest worker (see edge_agent.ingest.memory)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# Four 27 MB buffers (a real-size image's file, de-identified copy, sealed copy, pixels) freed while small objects
# made after them stay: how much of them is still resident? (a fresh process, so nothing else blurs the figure)
_PROBE = r"""
import gc, sys
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "fixed":
    from edge_agent.ingest.memory import return_large_buffers
    assert return_large_buffers()
n = 27 << 20
first = b"\x01" * n
del first
base = rss_mb()
images = [b"\x02" * n for _ in range(4)]
later = [bytearray(64) for _ in range(1000)]
del images
gc.collect()
print(rss_mb() - base)
"""


def _kept_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return float(out.stdout)


def test_freed_image_buffers_are_given_back_to_the_system():
    if not Path("/proc/self/statm").exists():
        pytest.skip("needs Linux's /proc to read resident memory")
    plain = _kept_mb("plain")
    if plain < 50:
        pytest.skip(f"this C library gives large freed buffers back by itself ({plain:.0f} MB kept): nothing to fix here")
    assert _kept_mb("fixed") < 10, "freed image buffers stayed resident"
