"""The daemon hook on real threads: profile choice, visible fallback, a study triaged without anyone touching the box."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge_agent.box import open_box
from edge_agent.inference import service
from edge_agent.inference.worker import result_of
from edge_agent.ingest import mg
from edge_agent.ingest.service import IngestService
from edge_agent.settings import Settings

REPO = Path(__file__).resolve().parents[3]


def _wait(db, study_uid, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = result_of(db, study_uid)
        if r is not None:
            return r
        time.sleep(0.05)
    raise AssertionError("study was not triaged in time")


def _run_box(tmp_path, **env):
    settings = Settings.load(env={"MAMMO_HOME": str(tmp_path / "home"), "MAMMO_KEYSTORE_PASSPHRASE": "pw", **env})
    box = open_box(settings, interactive=False)
    stop = threading.Event()
    threads = service.start_services(box, stop)
    ingest = IngestService.from_box(box)
    patient = mg.fake_patient(42)
    uid = mg._uid("svc", 42)
    for i, (lat, view) in enumerate(mg.SCREENING_VIEWS):
        res = ingest.ingest_bytes(mg.to_bytes(mg.mammogram(mg.synthetic_pixels(i, lat, 256), patient=patient, laterality=lat, view=view,
                                                         study_uid=uid, instance_number=i + 1)), source="test")
    result = _wait(box.db, res.study_uid)
    runtime = box.db.execute("SELECT profile, backend, fallback_reason FROM infer_runtime").fetchone()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    box.close()
    return result, runtime


def test_study_is_triaged_on_the_detected_profile(tmp_path):
    result, runtime = _run_box(tmp_path)
    assert result["status"] == "done" and result["profile"] == "cpu-small"
    assert runtime == ("cpu-small", "onnx-int8", None)


def test_accelerator_whose_delegate_fails_to_load_falls_back_to_cpu_visibly(tmp_path):
    broken = tmp_path / "libvx_delegate.so"
    broken.write_bytes(b"\x7fELF not really")
    result, runtime = _run_box(tmp_path, MAMMO_INFER_PROFILE="accel-tflite-delegate", MAMMO_INFER_TFLITE_DELEGATE=str(broken))
    assert result["status"] == "done"
    assert runtime[0] == "cpu-small" and runtime[1] == "onnx-int8"
    assert "accel-tflite-delegate could not run" in runtime[2] and "delegate" in runtime[2]


def _mammo(*args, home):
    env = {**os.environ, "MAMMO_HOME": str(home), "MAMMO_KEYSTORE_PASSPHRASE": "pw"}
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_hw_detect_and_hw_bench_report_every_profile(tmp_path):
    detected = _mammo("hw", "detect", "--json", home=tmp_path)
    assert detected["chosen"] in detected["profiles"] and len(detected["reasons"]) == len(detected["profiles"])
    bench = _mammo("hw", "bench", "--images", "2", "--json", home=tmp_path)
    assert bench["profiles"]["cpu-small"]["status"] == "ran"
    assert bench["profiles"]["cpu-small"]["max_prob_diff_vs_reference"] < 0.05
    assert bench["profiles"]["gpu-cuda"]["status"] == "unavailable" or bench["profiles"]["gpu-cuda"]["status"] in {"ran", "fell back"}


def test_model_cli_lists_and_activates(tmp_path, shipped_dir, release_dir):
    listed = _mammo("model", "list", "--json", home=tmp_path)
    assert any(r["source"] == "shipped" for r in listed["releases"])
    act = _mammo("model", "activate", str(release_dir), "--json", home=tmp_path)
    assert act["selftest"]["passed"]
    with_history = _mammo("model", "list", "--json", home=tmp_path)
    assert [h["path"] for h in with_history["history"]] == [str(release_dir.resolve())]


def test_bench_study_prints_int8_beside_pytorch_fp32_per_transfer_syntax_and_stage(tmp_path):
    out = _mammo("bench", "study", "--studies", "1", "--latency-studies", "2", "--size", "256x320", "--pixel-sets", "1", "--json", home=tmp_path)
    assert out["image_size"] == [256, 320] and out["bits_stored"] == 14
    ours, peer = out["results"]["int8 (active profile)"], out["results"]["pytorch fp32"]
    assert ours["backend"] == "onnx-int8" and peer["backend"] == "torch-fp32"
    syntaxes = out["transfer_syntaxes"]
    assert syntaxes[:2] == ["native", "rle"] and set(syntaxes) <= {"native", "rle", "j2k"}
    n = 1 + len(syntaxes) * 3  # warm-up, then 2 latency + 1 sustained per syntax
    assert ours["result_statuses"] == {"done": n} and peer["result_statuses"] == {"done": n}
    for name in syntaxes:
        o, p = ours["by_syntax"][name], peer["by_syntax"][name]
        assert 0 < o["p50_ms"] <= o["p95_ms"] and out["ratio_p95_int8_to_pytorch_fp32"][name] == round(o["p95_ms"] / p["p95_ms"], 3)
        assert list(o["stages_ms"]) == ["receive_ingest", "read_decrypt", "decode", "preprocess", "inference", "heatmap", "store", "commit"]
        assert o["stages_ms"]["receive_ingest"]["p50"] > 0 and o["stages_ms"]["inference"]["p50"] > 0
        # every view of the timed studies was preprocessed, in its job or while its study arrived; ingest had decoded it
        assert o["views_timed"] >= 4 * 2 and o["view_stages_ms"]["preprocess"]["p50"] > 0
        assert 0 <= o["views_prepared_while_arriving_mean"] <= 4
    assert 0 < ours["rss_when_ready_mb"] <= ours["peak_rss_mb"] and 0 < peer["peak_rss_mb"]
    # each view decoded once: ingest handed its work image to inference (none is read back and decoded again)
    assert ours["views_decoded_by_ingest"]["taken"] == 4 * n
    # the whole appliance: the box and its ingest worker processes, summed at one instant, within the sum of their own peaks
    assert ours["appliance_processes"] >= 2 and ours["peak_rss_mb"] < ours["peak_rss_appliance_sampled_mb"] <= ours["peak_rss_appliance_bound_mb"]


class _LockedOnce:
    """The box's real queue, except that its first claim finds the database locked past the busy timeout (an interface, not a patch)."""

    def __init__(self, queue) -> None:
        self._queue = queue
        self.refused = 0

    def claim(self, *args, **kwargs):
        from edge_agent.errors import StoreError

        if not self.refused:
            self.refused += 1
            raise StoreError("The box database stayed locked: database is locked. Another process holds a long transaction; retry shortly.")
        return self._queue.claim(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._queue, name)


def test_an_inference_worker_claims_again_after_the_database_was_locked(box):
    from edge_agent.worker import Worker

    seen = []
    queue = _LockedOnce(box.queue)
    stop = threading.Event()
    worker = Worker(queue, "infer", lambda job: seen.append(job.payload) or None, name="infer-test", poll_s=0.01, stop=stop)
    thread = threading.Thread(target=service.keep_running, args=(worker, stop), daemon=True)
    thread.start()
    box.queue.enqueue("infer", {"study_uid": "1.2.3"})
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(timeout=10)
    assert queue.refused == 1 and seen == [{"study_uid": "1.2.3"}]
