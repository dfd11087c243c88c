"""``mammo hw bench``: every hardware profile this machine can load, on the same images, against the fp32 reference.

Beside the profiles it measures: it opens each one exactly as the inference
service does (``hardware_profiles.runtime.open_on_profile``), so a profile that
falls back on this machine reports so, with its reason.  Speed belongs here,
never in a test assertion; figures depend on the machine and its load.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from models.runtime import Screener


def hw_bench(n_images: int = 12) -> dict[str, Any]:
    """Every profile this machine can load, on the same preprocessed images, against the fp32 ONNX reference."""
    from hardware_profiles.detect import detect
    from hardware_profiles.profiles import load_profiles
    from hardware_profiles.runtime import open_on_profile
    from hardware_profiles.select import unmet
    from models.bench import bench_images
    from models.release_files import load_release
    from models.runtime import Screener

    release = load_release()
    images, source, *_ = bench_images(n_images)
    ref = Screener(release, backend="onnx-fp32", threads=2)
    reference = np.array([1 / (1 + np.exp(-ref.raw(x)[0])) for x in images])
    profiles = load_profiles()
    facts = detect(tuple(n for p in profiles.values() for n in p.delegates))
    out: dict[str, Any] = {}
    for name, profile in sorted(profiles.items(), key=lambda kv: -kv[1].priority):
        lacking = unmet(profile, facts)
        if lacking:
            out[name] = {"status": "unavailable", "reason": "; ".join(lacking)}
            continue
        delegate = facts.delegates[0][1] if facts.delegates else None
        opened = open_on_profile(release, profile, profiles, delegate)
        screener = cast("Screener", opened.screener)
        screener.raw(images[0])
        ms, probs = [], []
        for x in images:
            t0 = time.perf_counter()
            logits, _ = screener.raw(x)
            ms.append((time.perf_counter() - t0) * 1000)
            probs.append(1 / (1 + np.exp(-logits)))
        out[name] = {
            "status": "fell back" if opened.fallback_reason else "ran",
            "reason": opened.fallback_reason,
            "backend": opened.backend,
            "threads": opened.profile.threads,
            "median_ms": round(float(np.median(ms)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "max_prob_diff_vs_reference": round(float(np.max(np.abs(np.array(probs) - reference))), 4),
        }
    return {"benchmark": "hw", "release": release.version, "images": source, "n_images": len(images), "reference": "onnx-fp32 on CPU", "machine": {"cores": facts.cores, "providers": list(facts.ort_providers)}, "profiles": out}
