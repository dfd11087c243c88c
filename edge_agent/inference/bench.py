"""``mammo bench study`` (``mammo hw bench`` lives beside the profiles it measures: hardware_profiles/bench.py).

A real box (the daemon's own ingest services: DICOM receiver,
ingest workers; inference workers on the active profile) in a temporary
home, in a child process of its own so its peak memory is the box's alone.
This process plays the modality: it sends real-size 4-view screening
studies (3328 x 4096, 14 bits, see :mod:`edge_agent.inference.realsize`)
over DICOM C-STORE, uncompressed, RLE and JPEG 2000. A study's time runs
from the first C-STORE to its triage row being visible in the box database;
the inference handler says where its part went (per stage). Each view is
decoded once, by ingest, which hands its work image to inference (see
:mod:`edge_agent.ingest.work_images`); it is preprocessed while its study
is still arriving (see :mod:`edge_agent.inference.viewcache`), inside
``receive_ingest``, and its cost is reported per view (``view_stages_ms``;
read and decode stay 0 for a view handed over). A second box, with the
PyTorch fp32 model in the same path, runs beside it for the ratio; the two
take turns study by study, so a change in the machine's load hits both.

Memory is the whole appliance's: the box process and its ingest worker
processes, summed at the same instant (:class:`ApplianceMemory`), with the
sum of each process's own peak as the upper bound.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import resource
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from pydicom import Dataset

from edge_agent.bench import percentile
from edge_agent.inference import realsize
from edge_agent.settings import Settings

#: The per-study stages reported, in path order: the handler's own, framed by the
#: C-STORE and ingest before it and the result's commit after it.
REPORTED_STAGES = ("receive_ingest", "read_decrypt", "decode", "preprocess", "inference", "heatmap", "store", "commit")


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec, whereas ru_maxrss keeps the
    high-water mark of the parent the process was forked from (here: the bench, holding every study's pixels)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _rss_kb(pid: int | str) -> int:
    """Resident memory of a process now (kB), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * (resource.getpagesize() // 1024)
    except (OSError, ValueError, IndexError):
        return 0


def _hwm_kb(pid: int | str) -> int:
    """Peak resident memory of a live process (kB, VmHWM), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class ApplianceMemory:
    """The whole appliance's resident memory: the box process and its ingest worker processes, summed.

    A thread samples every process's RSS at the same instant (``period_s``)
    and keeps the largest sum; a peak shorter than the period can slip
    between samples, so the sum of each process's own peak (VmHWM, which
    never misses one; workers replaced on the way count with theirs) is kept
    as the upper bound. The true simultaneous peak lies between the two.
    """

    def __init__(self, pids: Callable[[], list[int]], period_s: float = 0.01) -> None:
        self._pids = pids
        self.period_s = period_s
        self.peak_sum_kb = 0
        self.peak_at_processes = 0
        self._worker_hwm: dict[int, int] = {}  # every worker ever seen: its latest VmHWM
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def start(self) -> ApplianceMemory:
        self._thread.start()
        return self

    def _sample(self) -> list[int]:
        pids = self._pids()
        total = _rss_kb("self")
        for pid in pids:
            rss = _rss_kb(pid)
            total += rss
            # a worker may exit between two readings of its VmHWM: what was sampled of it counts toward its peak too
            self._worker_hwm[pid] = max(self._worker_hwm.get(pid, 0), rss)
        if total > self.peak_sum_kb:
            self.peak_sum_kb, self.peak_at_processes = total, 1 + len(pids)
        return pids

    def _note_peaks(self, pids: list[int]) -> None:
        for pid in pids:
            self._worker_hwm[pid] = max(self._worker_hwm.get(pid, 0), _hwm_kb(pid))

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.period_s):
            pids = self._sample()
            n += 1
            if n % 10 == 0:  # a worker's own peak stays in its VmHWM: reading it now and then is enough
                self._note_peaks(pids)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=5)
        self._note_peaks(self._sample())
        box_hwm = _hwm_kb("self")
        bound = box_hwm + sum(self._worker_hwm.values())
        return {
            "peak_rss_appliance_sampled_mb": round(self.peak_sum_kb / 1024, 1),
            "peak_rss_appliance_bound_mb": round(bound / 1024, 1),
            "appliance_processes": self.peak_at_processes,
            "worker_processes_seen": len(self._worker_hwm),
            "peak_rss_worker_processes_mb": sorted((round(v / 1024, 1) for v in self._worker_hwm.values()), reverse=True),
            "sample_period_ms": round(self.period_s * 1000, 1),
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _box_main(conn: Connection, home: str, backend: str | None) -> None:
    """The box, in its own process: ready -> (port, AE title, database) ... stop -> what it measured."""
    from edge_agent.box import open_box
    from edge_agent.inference.service import start_workers
    from edge_agent.ingest.service import start_services as start_ingest

    port = _free_port()
    settings = Settings.load(env={
        "MAMMO_HOME": home, "MAMMO_KEYSTORE_PASSPHRASE": "bench", "MAMMO_DICOM_HOST": "127.0.0.1", "MAMMO_DICOM_PORT": str(port),
        "MAMMO_INGEST_STUDY_COMPLETE_TIMEOUT_S": "3600",
    })
    box = open_box(settings, interactive=False)
    stop = threading.Event()
    threads = start_ingest(box, stop)  # what `mammo up` starts, with the PyTorch model swapped in for the peer
    handlers, infer_threads = start_workers(box, stop, backend=backend)
    threads += infer_threads
    ready_rss = _peak_rss_mb()
    pool = box.ingest_pool
    memory = ApplianceMemory(pool.pids if pool is not None else list).start()
    try:
        conn.send(("ready", port, settings.dicom_ae_title, str(settings.db_path)))
        conn.recv()  # "stop"
        statuses = dict(box.db.execute("SELECT status, count(*) FROM infer_results GROUP BY status").fetchall())
        handed = box.work_images
        handoff = {"offered": handed.offered, "taken": handed.taken} if handed is not None else None
        runtime = box.db.execute("SELECT profile, backend, fallback_reason FROM infer_runtime").fetchone()
    finally:
        appliance = memory.stop()  # before the workers stop
        stop.set()
        for t in threads:
            t.join(timeout=60)
        box.close()
    timings = sorted((t for h in handlers for t in h.timings), key=lambda t: t.started)
    view_timings = sorted(v for h in handlers for v in h.view_timings)
    conn.send({
        "profile": runtime[0], "backend": runtime[1], "fallback_reason": runtime[2], "result_statuses": statuses,
        "views_decoded_by_ingest": handoff,  # work images ingest handed to inference (each view decoded once)
        "timings": [t.as_dict() for t in timings],
        "view_timings": view_timings,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_when_ready_mb": ready_rss,  # imports, model, receiver: before the first study
        "peak_rss_largest_worker_process_mb": max(appliance["peak_rss_worker_processes_mb"], default=0.0),
    } | appliance)


def _send(port: int, ae_title: str, study: list[Dataset]) -> None:
    from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation
    from pynetdicom import AE

    ae = AE(ae_title="BENCH_SCU")
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation, [str(study[0].file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise RuntimeError("the box's DICOM receiver refused the association")
    try:
        for ds in study:
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) != 0:
                raise RuntimeError(f"C-STORE failed with status {status}")
    finally:
        assoc.release()


class _Results:
    """Counts triage rows in the box database from outside, through SQLite (read-only)."""

    def __init__(self, db_path: str) -> None:
        self.db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM infer_results").fetchone()[0])

    def wait_for(self, n: int, timeout: float = 1800) -> float:
        deadline = time.monotonic() + timeout
        while (c := self.count()) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {c} of {n} studies were triaged within {timeout:.0f} s")
            time.sleep(0.005)
        return time.monotonic()


def _views(n_sets: int, syntaxes: list[str], width: int, height: int, bits: int) -> dict[str, list[realsize.Views]]:
    """Pixel sets of the four views, encoded once per transfer syntax (studies differ in patient and UIDs)."""
    from edge_agent.ingest import mg

    out: dict[str, list[realsize.Views]] = {name: [] for name in syntaxes}
    for k in range(n_sets):
        for i, (lat, view) in enumerate(mg.SCREENING_VIEWS):
            img = realsize.pixels(100 * k + i, lat, width, height, bits)
            for name in syntaxes:
                if len(out[name]) <= k:
                    out[name].append({})
                out[name][k][(lat, view)] = (img, realsize.encode(img, realsize.SYNTAXES[name], bits))
    return out


class _Box:
    """One box in its own process, driven from here: studies in over C-STORE, triage rows counted through SQLite."""

    def __init__(self, backend: str | None, home: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.backend = backend
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_box_main, args=(child, home, backend), name="bench-box")
        self.proc.start()
        if not self._conn.poll(300):
            raise RuntimeError("the benchmark box did not start within 300 s")
        _, self.port, self.ae_title, db_path = self._conn.recv()
        self.results = _Results(db_path)
        self.done = 0
        self.latency_marks: list[tuple[str, int, float, float]] = []  # (syntax, study number, sent, triaged)

    def study(self, study: list[Dataset], syntax: str | None) -> float:
        """Send one study and wait for its triage; its time from the first C-STORE (not recorded when syntax is None)."""
        t0 = time.monotonic()
        _send(self.port, self.ae_title, study)
        t_done = self.results.wait_for(self.done + 1)
        self.done += 1
        if syntax is not None:
            self.latency_marks.append((syntax, self.done, t0, t_done))
        return t_done - t0

    def sustained(self, studies: list[list[Dataset]]) -> float:
        """Studies per minute, sent back to back."""
        t0 = time.monotonic()
        for study in studies:
            _send(self.port, self.ae_title, study)
        self.results.wait_for(self.done + len(studies))
        self.done += len(studies)
        return len(studies) / (time.monotonic() - t0) * 60

    def stop(self) -> dict[str, Any]:
        try:
            self.results.db.close()
            self._conn.send("stop")
            if not self._conn.poll(300):
                raise RuntimeError("the benchmark box did not stop within 300 s")
            out: dict[str, Any] = self._conn.recv()
            return out
        finally:
            self.proc.join(timeout=300)
            if self.proc.is_alive():
                self.proc.kill()


def _stages(box: dict[str, Any], marks: list[tuple[str, int, float, float]], name: str) -> dict[str, Any]:
    """Per-study stages of the timed studies of one syntax, and per-view stages wherever the view was prepared."""
    timings, view_timings = box["timings"], box["view_timings"]
    stages: dict[str, list[float]] = {s: [] for s in REPORTED_STAGES}
    ready: list[int] = []
    windows = []
    for syntax, seq, t0, t_done in marks:
        if syntax != name or seq - 1 >= len(timings):
            continue
        windows.append((t0, t_done))
        t = timings[seq - 1]  # the handler saw the studies in the order they were sent
        stages["receive_ingest"].append(t["started"] - t0)
        for s in t["seconds"]:
            stages[s].append(t["seconds"][s])
        stages["commit"].append(t_done - t["finished"])
        ready.append(t["views_ready"])
    per_view = [sec for done_at, sec in view_timings if any(a <= done_at <= b for a, b in windows)]

    def pct(v: list[float]) -> dict[str, float]:
        return {"p50": round(percentile(v, 50) * 1000, 1), "p95": round(percentile(v, 95) * 1000, 1)}

    return {
        "stages_ms": {s: pct(v) for s, v in stages.items()},
        "views_prepared_while_arriving_mean": round(float(np.mean(ready)), 2) if ready else None,
        "view_stages_ms": {s: pct([v[s] for v in per_view]) for s in ("read_decrypt", "decode", "preprocess")},
        "views_timed": len(per_view),
    }


def _run_boxes(backends: list[str | None], views: dict[str, list[realsize.Views]], n_latency: int, n_sustained: int) -> list[dict[str, Any]]:
    """Every backend's box at once; they take turns study by study, so a change in the machine's load hits both alike."""
    from edge_agent.ingest import mg

    counter = iter(range(1_000_000))

    def next_study(name: str) -> list[Dataset]:
        i = next(counter)
        sets = views[name]
        return realsize.study(sets[i % len(sets)], realsize.SYNTAXES[name], patient=mg.fake_patient(20_000 + i),
                              study_uid=mg._uid("bench-study", i, time.time_ns()))

    with contextlib.ExitStack() as stack:
        boxes = [_Box(b, stack.enter_context(tempfile.TemporaryDirectory(prefix="mammo-bench-study-"))) for b in backends]
        stopped: dict[int, dict[str, Any]] = {}
        try:
            per_syntax: list[dict[str, dict[str, Any]]] = [{} for _ in boxes]
            for box in boxes:  # warm-up: model load and first-run allocations are not part of a study's time
                box.study(next_study(next(iter(views))), None)
            for name in views:
                times: list[list[float]] = [[] for _ in boxes]
                for _ in range(n_latency):
                    study = next_study(name)
                    for k, box in enumerate(boxes):
                        times[k].append(box.study(study, name))
                for k, box in enumerate(boxes):
                    rate = box.sustained([next_study(name) for _ in range(n_sustained)]) if n_sustained else None
                    per_syntax[k][name] = {
                        "p50_ms": round(percentile(times[k], 50) * 1000, 1),
                        "p95_ms": round(percentile(times[k], 95) * 1000, 1),
                        "latency_studies": len(times[k]),
                        "studies_per_min": round(rate, 1) if rate else None,
                        "sustained_studies": n_sustained,
                    }
        finally:
            for k, box in enumerate(boxes):
                stopped[k] = box.stop()
    out = []
    for k, box in enumerate(boxes):
        for name in views:
            per_syntax[k][name] |= _stages(stopped[k], box.latency_marks, name)
        out.append({key: v for key, v in stopped[k].items() if key not in ("timings", "view_timings")} | {"by_syntax": per_syntax[k]})
    return out


def study_bench(n_sustained: int = 10, n_latency: int = 20, width: int = realsize.WIDTH, height: int = realsize.HEIGHT,
                bits: int = realsize.BITS, syntaxes: tuple[str, ...] = tuple(realsize.SYNTAXES), pixel_sets: int = 2) -> dict[str, Any]:
    notes = []
    wanted = list(syntaxes)
    if "j2k" in wanted and not realsize.j2k_encoding_available():
        wanted.remove("j2k")
        notes.append("JPEG 2000 skipped: no JPEG 2000 encoder here (install pylibjpeg-openjpeg)")
    t0 = time.monotonic()
    views = _views(pixel_sets, wanted, width, height, bits)
    prepare_s = time.monotonic() - t0
    ours, peer = _run_boxes([None, "torch-fp32"], views, n_latency, n_sustained)
    ratios = {name: round(ours["by_syntax"][name]["p95_ms"] / peer["by_syntax"][name]["p95_ms"], 3) if peer["by_syntax"][name]["p95_ms"] else None
              for name in wanted}
    return {
        "benchmark": "study",
        "path": "DICOM C-STORE over loopback -> ingest (fix, de-identify, encrypt, store) -> study complete -> infer queue -> "
                "4 views read, decrypted, decoded, preprocessed, scored, heatmaps stored -> triage committed",
        "image_size": [width, height], "bits_stored": bits, "transfer_syntaxes": wanted, "pixel_sets": pixel_sets,
        "study_bytes_mb": {name: round(sum(len(enc) or img.nbytes for img, enc in views[name][0].values()) / 2**20, 1) for name in wanted},
        "prepare_s": round(prepare_s, 1),
        "goal_p95_ms": 2000, "goal_peak_rss_mb": 1024,
        "results": {"int8 (active profile)": ours, "pytorch fp32": peer},
        "ratio_p95_int8_to_pytorch_fp32": ratios,
        "notes": notes,
    }
