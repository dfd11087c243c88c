"""``mammo bench infer``: the four forms of the model, side by side, one run.

Per-image latency (batch 1, fixed thread count) of PyTorch fp32 eager, ONNX
fp32, ONNX INT8 and TFLite INT8 on the SAME preprocessed images, interleaved
image by image so that background load on a shared 2-core box hits every
runtime alike. Preprocessing is excluded (it is the same for all four).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from models.release_files import load_release
from models.runtime import BACKENDS, Screener, is_available, stack_input

__all__ = ["bench_infer", "bench_images"]


def bench_images(n: int, folder: str | Path | None = None,
                 size: int | None = None) -> tuple[np.ndarray, str, list[float]]:
    """(n, S, S) preprocessed images (real ones when available, else synthetic),
    their source, and the preprocessing time of each in ms.

    ``size`` defaults to the input size of the default (newest) release, so a
    caller that benchmarks that release gets images its model takes.
    """
    if size is None:
        size = load_release().input_size
    from models.data import load_pixels, read_folder, shared_data_dir
    from models.preprocess import preprocess
    from models.synthetic import generate

    root = Path(folder) if folder else shared_data_dir() / "mias"
    if (root / "images.csv").exists():
        raws = [load_pixels(r) for r in read_folder(root)[:n]]
        source = f"real ({root})"
    else:
        raws = [generate(i, "ABCD"[i % 4], [None, "mass"][i % 2]).image for i in range(n)]
        source = "synthetic (real data not found)"
    imgs, ms = [], []
    for raw in raws:
        t0 = time.perf_counter()
        imgs.append(preprocess(raw, size).image)
        ms.append((time.perf_counter() - t0) * 1000)
    return np.stack(imgs), source, ms


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"median_ms": round(float(np.median(a)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "n": len(ms)}


def bench_infer(release: Path, images: str | None = None, n_images: int = 30, threads: int = 2,
                checkpoint: str | None = None, warmup: int = 3) -> dict:
    import torch

    from models.network import model_from_state_dict

    rel = load_release(release)
    x, source, pre_ms = bench_images(n_images, images, rel.input_size)
    torch.set_num_threads(threads)
    model = model_from_state_dict(torch.load(checkpoint or rel.file("model_fp32.pt"), map_location="cpu"))

    def torch_run(img, n=threads):
        torch.set_num_threads(n)
        with torch.inference_mode():
            model(torch.from_numpy(stack_input(img, None, model.in_ch)))

    # the named peer is PyTorch at the same thread count; 1 thread is shown too
    # because on a busy 2-core box PyTorch with 2 threads can be far slower
    runners = {"pytorch_fp32_eager": torch_run}
    if threads != 1:
        runners["pytorch_fp32_eager_1thread"] = lambda img: torch_run(img, 1)
    skipped = {}
    for b in ("onnx-fp32", "onnx-int8", "tflite-int8"):
        if is_available(b):
            runners[b.replace("-", "_")] = Screener(rel, backend=b, threads=threads).raw
        else:
            skipped[b] = "runtime not installed"
    times: dict[str, list[float]] = {k: [] for k in runners}
    for img in x[:warmup]:
        for run in runners.values():
            run(img)
    for img in x:
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(img)
            times[name].append((time.perf_counter() - t0) * 1000)
    torch.set_num_threads(threads)
    sizes = {"pytorch_fp32_eager": rel.file("model_fp32.pt").stat().st_size}
    for b, f in BACKENDS.items():
        if not b.startswith("torch"):  # the .pt file is already counted as pytorch_fp32_eager
            sizes[b.replace("-", "_")] = rel.file(f).stat().st_size
    lat = {k: _stats(v) for k, v in times.items()}
    out = {
        "model_version": rel.version,
        "images": source,
        "n_images": int(len(x)),
        "input": [1, model.in_ch, int(x.shape[-1]), int(x.shape[-1])],
        "threads": threads,
        "batch": 1,
        "latency": lat,
        "preprocess_ms": _stats(pre_ms),  # same for every runtime; not in the latencies
        "size_bytes": sizes,
        "int8_files_total_bytes": sizes["onnx_int8"] + sizes["tflite_int8"],
        "ratio_onnx_int8_vs_pytorch_fp32": {
            "latency_median": round(lat["onnx_int8"]["median_ms"] / lat["pytorch_fp32_eager"]["median_ms"], 4)
            if "onnx_int8" in lat else None,
            "size": round(sizes["onnx_int8"] / sizes["pytorch_fp32_eager"], 4),
        },
        "skipped": skipped,
    }
    return out
