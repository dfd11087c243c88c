"""A release's self-test: synthetic mammograms and the trusted model's answers on them.

Built with the release (``models.release_build``), where the fp32 ONNX export
is the trusted reference, and listed in its manifest, so the signature covers
it.  The box replays it on its own runtime before it activates a release
(``edge_agent.inference.activation.run_selftest``) and refuses one whose
answers drift.  It lives in ``models`` beside the release it belongs to: the
release builder must not import the daemon.

    selftest.npz
      images                uint8 (n, size, size)   synthetic mammograms (models.synthetic, fixed seeds)
      expected_p_abnormal   float (n,)              the fp32 ONNX model's answers
      expected_p_malignant  float (n,)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SELFTEST_FILE = "selftest.npz"


def build_selftest(release_dir: Path, n_images: int = 4, size: int = 256) -> Path:
    """Write the release's self-test and rewrite its manifest (so the release must be signed afterwards)."""
    from models.release_files import load_release, write_manifest
    from models.runtime import Screener
    from models.synthetic import generate

    release = load_release(release_dir, verify=False)
    findings = [None, "mass", "calcification", "spiculated"]
    images = np.stack([np.asarray(generate(1000 + i, "ABCD"[i % 4], findings[i % 4], size=size).image, np.uint8) for i in range(n_images)])
    ref = Screener(release, backend="onnx-fp32", threads=1)
    results = [ref.score(img) for img in images]
    path = Path(release_dir) / SELFTEST_FILE
    np.savez_compressed(path, images=images, expected_p_abnormal=np.array([r.p_abnormal for r in results]),
                        expected_p_malignant=np.array([r.p_malignant for r in results]))
    write_manifest(Path(release_dir), release.version)
    return path
