"""``mammo bench study`` and ``mammo hw bench``.

bench study: a real box in a temporary home (receiver on loopback, ingest,
inference workers on the active profile), fed 4-view screening studies over
DICOM C-STORE.  A study's time runs from the first C-STORE to its triage row
being committed.  The same run repeats with the PyTorch fp32 model in the
same path, for the ratio.
"""

from __future__ import annotations

import resource
import tempfile
import threading
import time
from typing import Any

import numpy as np

from edge_agent.bench import percentile
from edge_agent.box import open_box
from edge_agent.settings import Settings


def _datasets(n: int, size: int) -> list[list[bytes]]:
    """n screening studies (4 views each) of distinct fake women; a few pixel sets are reused to save time."""
    from edge_agent.ingest import mg

    pixels = {}
    for k in range(4):
        for lat, view in mg.SCREENING_VIEWS:
            pixels[(k, lat, view)] = mg.synthetic_pixels(k * 10 + (0 if view == "CC" else 1), lat, size)
    studies = []
    for i in range(n):
        patient = mg.fake_patient(10_000 + i)
        uid = mg._uid("bench-study", i, time.time_ns())
        studies.append([
            mg.to_bytes(mg.mammogram(pixels[(i % 4, lat, view)], patient=patient, laterality=lat, view=view, study_uid=uid, instance_number=j + 1, seed=i))
            for j, (lat, view) in enumerate(mg.SCREENING_VIEWS)
        ])
    return studies


def _send(port: int, ae_title: str, study: list[bytes]) -> None:
    import io

    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation

    ae = AE(ae_title="BENCH_SCU")
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise RuntimeError("the box's DICOM receiver refused the association")
    try:
        for raw in study:
            status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(raw)))
            if getattr(status, "Status", None) != 0:
                raise RuntimeError(f"C-STORE failed with status {status}")
    finally:
        assoc.release()


def _count(db) -> int:
    return db.execute("SELECT count(*) FROM infer_results").fetchone()[0]


def _wait_for(db, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while _count(db) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {_count(db)} of {n} studies were triaged within {timeout:.0f} s")
        time.sleep(0.005)


def _fixed_backend_factory(db, backend: str, threads: int):
    """The same path with another model form (the PyTorch original), recorded like a profile."""
    from edge_agent.inference.service import record_runtime
    from models.runtime import Screener

    def factory(release):
        record_runtime(db, f"bench:{backend}", backend, release.version, None)
        return Screener(release, backend=backend, threads=threads)

    return factory


def _run_box(backend: str | None, latency_studies: list, sustained_studies: list) -> dict[str, Any]:
    from edge_agent.inference.activation import ModelRegistry
    from edge_agent.inference.service import INFER_QUEUE, choose_profile, make_handler
    from edge_agent.ingest.scp import DicomReceiver
    from edge_agent.ingest.service import IngestService
    from edge_agent.worker import Worker

    with tempfile.TemporaryDirectory(prefix="mammo-bench-study-") as tmp:
        settings = Settings.load(env={
            "MAMMO_HOME": tmp, "MAMMO_KEYSTORE_PASSPHRASE": "bench", "MAMMO_DICOM_HOST": "127.0.0.1", "MAMMO_DICOM_PORT": "0",
            "MAMMO_INGEST_STUDY_COMPLETE_TIMEOUT_S": "3600",
        })
        box = open_box(settings, interactive=False)
        receiver = DicomReceiver(IngestService.from_box(box), settings)
        port = receiver.start()
        choice, profiles, delegate = choose_profile(box)
        ModelRegistry(box.db, settings).ensure_active()
        stop = threading.Event()
        threads = []
        for i in range(choice.profile.workers):
            handler = make_handler(box, choice, profiles, delegate)
            if backend is not None:
                handler.factory = _fixed_backend_factory(handler.queue.db, backend, choice.profile.threads)
            w = Worker(handler.queue, INFER_QUEUE, handler, name=f"bench-{i}", poll_s=0.002, stop=stop)
            t = threading.Thread(target=w.run, daemon=True)
            t.start()
            threads.append(t)
        try:
            # warm-up study: model load and first-run allocations are not part of a study's time
            _send(port, settings.dicom_ae_title, latency_studies[0])
            _wait_for(box.db, 1)
            times = []
            for study in latency_studies[1:]:
                done = _count(box.db)
                t0 = time.perf_counter()
                _send(port, settings.dicom_ae_title, study)
                _wait_for(box.db, done + 1)
                times.append(time.perf_counter() - t0)
            done = _count(box.db)
            t0 = time.perf_counter()
            for study in sustained_studies:
                _send(port, settings.dicom_ae_title, study)
            _wait_for(box.db, done + len(sustained_studies))
            sustained_s = time.perf_counter() - t0
            statuses = dict(box.db.execute("SELECT status, count(*) FROM infer_results GROUP BY status").fetchall())
            runtime = box.db.execute("SELECT profile, backend, fallback_reason FROM infer_runtime").fetchone()
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
            receiver.stop()
            box.close()
    return {
        "profile": runtime[0], "backend": runtime[1], "fallback_reason": runtime[2],
        "p50_ms": round(percentile(times, 50) * 1000, 1),
        "p95_ms": round(percentile(times, 95) * 1000, 1),
        "latency_studies": len(times),
        "studies_per_min": round(len(sustained_studies) / sustained_s * 60, 1),
        "sustained_studies": len(sustained_studies),
        "result_statuses": statuses,
        "peak_rss_mb_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def study_bench(n_sustained: int = 100, n_latency: int = 20, size: int = 1024) -> dict[str, Any]:
    studies = _datasets(n_latency + 1 + n_sustained, size)
    lat, sus = studies[: n_latency + 1], studies[n_latency + 1 :]
    ours = _run_box(None, lat, sus)
    peer = _run_box("torch-fp32", lat, sus)  # a fresh box: the same studies are new to it
    return {
        "benchmark": "study",
        "path": "DICOM C-STORE over loopback -> ingest (fix, de-identify, encrypt, store) -> study complete -> infer queue -> 4 views scored -> triage committed",
        "image_size": [size, size],
        "goal_p95_ms": 2000,
        "results": {"int8 (active profile)": ours, "pytorch fp32": peer},
        "ratio_p95_int8_to_pytorch_fp32": round(ours["p95_ms"] / peer["p95_ms"], 3) if peer["p95_ms"] else None,
        "ratio_throughput_int8_to_pytorch_fp32": round(ours["studies_per_min"] / peer["studies_per_min"], 3) if peer["studies_per_min"] else None,
    }


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
        screener = opened.screener
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
