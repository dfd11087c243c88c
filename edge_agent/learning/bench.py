"""``mammo bench train``: what local DP training costs, and what it costs screening.

On a throwaway box (a temporary home, synthetic confirmed studies through the
real ingest, the shipped model active):

* **DP vs not.** One local round over the same frozen features, same steps,
  same Poisson batches and seed: DP-SGD with Opacus (per-woman clipping,
  noise) against the peer, the same round without DP (plain SGD on the study
  loss). ``dp_ratio`` = DP seconds / plain seconds.
* **Screening while a round runs.** Real-size four-view studies
  (``edge_agent.inference.realsize``, 14-bit detector images) are triaged
  by the real inference handler from the queue (read, decrypt, decode,
  preprocess, score, heatmaps, commit), one after another, on an idle box
  and again while a training process runs a round (started as the
  scheduler starts it). Each study arrives while the round is running, so
  it meets a step in progress and the round's pause. p95 of enqueue-to-ack,
  ``screening_slowdown_ratio`` = training p95 / idle p95 (goal <= 1.5), and
  how long the round took to pause (from the ledger).
* The training process's peak memory (VmHWM) and the epsilon of the round.

Figures from a busy machine are noisy: the JSON says what was measured, not
what a quiet box does.
"""

from __future__ import annotations

import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.settings import Settings

PEER = "the same round without DP-SGD (plain SGD: no per-woman clipping, no noise; same features, steps, batches, seed)"
SCREENING_PEER = "the same real-size studies screened on the idle box"
GOAL_SLOWDOWN = 1.5


def _p95(values: list[float]) -> float:
    return float(np.percentile(np.asarray(values), 95)) if values else float("nan")


def _hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _box(home: Path, passphrase: str, train: dict[str, Any]) -> Settings:
    lines = [f'keystore_passphrase = "{passphrase}"', "[train]"]
    lines += [f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {str(v).lower() if isinstance(v, bool) else v}"
              for k, v in train.items()]
    home.mkdir(parents=True, mode=0o700)
    (home / "mammo.toml").write_text("\n".join(lines) + "\n")
    return Settings.load(env={"MAMMO_HOME": str(home)})


def train_bench(n_studies: int = 48, steps: int = 60, n_screening: int = 6, width: int = 3328, height: int = 4096) -> dict[str, Any]:
    import torch

    from edge_agent.box import open_box
    from edge_agent.inference.activation import ModelRegistry
    from edge_agent.inference.realsize import pixels, study
    from edge_agent.inference.worker import InferenceHandler
    from edge_agent.ingest import mg
    from edge_agent.ingest.image_store import ImageStore
    from edge_agent.ingest.service import IngestPaths, IngestService
    from edge_agent.learning import examples, ledger, runner
    from models import dp
    from models.runtime import Screener
    from models.trainable import TrainablePart

    torch.set_num_threads(1)
    out: dict[str, Any] = {"benchmark": "train", "peer": PEER, "screening_peer": SCREENING_PEER, "goal_screening_slowdown_ratio": GOAL_SLOWDOWN}
    with tempfile.TemporaryDirectory(prefix="mammo-bench-train-") as tmp:
        passphrase = secrets.token_urlsafe(16)
        train = {"window": "00:00-00:00", "steps": 100_000, "min_examples": 4, "min_new_examples": 1, "max_load": 1000.0,
                 "max_temp_c": 1000.0, "require_mains": False, "resume_idle_s": 1.0, "holdout_fraction": 0.2}
        settings = _box(Path(tmp) / "home", passphrase, train)
        box = open_box(settings, interactive=False)
        ingest = IngestService.from_box(box, workers=1)
        try:
            registry = ModelRegistry(box.db, settings)
            registry.ensure_active()
            t = time.perf_counter()
            uids = []
            for seed in range(n_studies):
                sent_uid = str(mg._uid("bench-train", seed))
                res = [ingest.ingest_bytes(mg.to_bytes(mg.mammogram(mg.synthetic_pixels(seed * 10 + i, lat, 256), patient=mg.fake_patient(seed + 1000),
                                                                     laterality=lat, view=view, study_uid=sent_uid, instance_number=i + 1, seed=seed)),
                                           source="bench") for i, (lat, view) in enumerate(mg.SCREENING_VIEWS)]
                uids.append(res[0].study_uid)
            big = []
            for k in range(n_screening):
                views = {(lat, v): (img := pixels(k * 4 + i, lat, width, height), img.tobytes()) for i, (lat, v) in enumerate(mg.SCREENING_VIEWS)}
                ds = study(views, None, patient=mg.fake_patient(5000 + k), study_uid=mg._uid("bench-screen", k))
                big.append([ingest.ingest_bytes(mg.to_bytes(d), source="bench") for d in ds][0].study_uid)
            out["prepare_s"] = round(time.perf_counter() - t, 1)
            now = time.time()
            for i, uid in enumerate(uids):
                box.db.execute("INSERT INTO kiosk_feedback (study_uid, username, role, agrees, birads, density, category_source, created_at)"
                               " VALUES (?, 'bench', 'radiologist', 1, ?, 'B', 'radiologist', ?)", [uid, 4 if i % 2 else 1, now - 60 + i])
            store = ImageStore(IngestPaths.of(settings).images, box.keystore.master_key())

            def handler() -> InferenceHandler:  # a fresh one per phase: no view prepared by the other phase is reused
                return InferenceHandler(box.queue, store, registry, lambda rel: Screener(rel, backend="onnx-int8", threads=1), profile="bench")

            while (job := box.queue.claim("infer")) is not None:  # what ingest queued: triaged once, unmeasured (warm-up)
                box.queue.ack(job, within=handler()(job))

            # --- DP round vs the plain peer on the same features ---------------------------------------------------
            _, model = runner.active_model(box.db, settings)
            train_ex, _ = examples.split(examples.examples(box.db), settings.train_holdout_fraction)
            t = time.perf_counter()
            feats = runner._features(model.net, box.db, store, [(e.study_uid, e.label) for e in train_ex], model.release.input_size, lambda: False)
            assert feats is not None
            out["features_s_per_view"] = round((time.perf_counter() - t) / max(1, int(feats.mask.sum())), 4)
            plan = runner.plan(Settings.load(env={"MAMMO_HOME": str(settings.home)}, train_steps=steps), len(feats), [])
            cfg = dp.DPConfig(plan.noise_multiplier, plan.max_grad_norm, plan.sample_rate, steps, lr=settings.train_lr, seed=1,
                              beta=model.release.operating_points.beta, fallback_p_other=model.release.operating_points.fallback_p_other)
            t = time.perf_counter()
            r = dp.run_round(TrainablePart.from_model(model.net), feats, cfg)
            dp_s = time.perf_counter() - t
            t = time.perf_counter()
            dp.train_plain(TrainablePart.from_model(model.net), feats, cfg)
            plain_s = time.perf_counter() - t
            out.update(training_studies=len(feats), steps=steps, expected_batch=settings.train_batch_size, sample_rate=round(plan.sample_rate, 4),
                       noise_multiplier=round(plan.noise_multiplier, 3), seconds_per_round_dp=round(dp_s, 2),
                       seconds_per_round_plain=round(plain_s, 2), dp_ratio=round(dp_s / plain_s, 2) if plain_s else None,
                       epsilon_round=round(r.epsilon, 4), delta=cfg.delta, trainable_values=int(r.delta.size))

            # --- screening idle vs while a round runs ---------------------------------------------------------------
            def screen(h: InferenceHandler, uid: str, tag: str) -> tuple[float, float]:
                box.queue.enqueue("infer", {"study_uid": uid}, key=f"bench:{tag}:{uid}")
                t0 = time.perf_counter()
                enq = time.time()
                job = box.queue.claim("infer")
                assert job is not None
                box.queue.ack(job, within=h(job))
                return (time.perf_counter() - t0) * 1000, enq

            idle_h = handler()
            idle = [screen(idle_h, uid, "idle")[0] for uid in big]
            proc = subprocess.Popen([sys.executable, "-m", "edge_agent.learning.runner", "--force-window"],
                                    env={**os.environ, "MAMMO_HOME": str(settings.home)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            busy, pause_s, hwm = [], [], 0.0
            try:
                busy_h = handler()
                for uid in big:
                    _wait_running(box.db, proc)
                    ms, enq = screen(busy_h, uid, "busy")
                    busy.append(ms)
                    paused = _wait_state(box.db, "paused", proc, timeout_s=3.0)  # a short study may end within the step in progress
                    if paused is not None:
                        pause_s.append(max(0.0, paused - enq))
                    hwm = max(hwm, _hwm_mb(proc.pid) or 0.0)
                rnd = ledger.rounds(box.db)[0] if ledger.rounds(box.db) else None
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            from edge_agent.inference.service import choose_profile

            profile = choose_profile(box)[0].profile
            out.update(hardware_profile=profile.name, profile_budget_ms_per_study=profile.latency_budget_ms_per_study,
                       within_profile_budget=_p95(busy) <= profile.latency_budget_ms_per_study)
            out.update(screening_studies=len(big), image_size=[width, height], screening_p95_idle_ms=round(_p95(idle), 1),
                       screening_p95_training_ms=round(_p95(busy), 1),
                       screening_median_idle_ms=round(statistics.median(idle), 1), screening_median_training_ms=round(statistics.median(busy), 1),
                       screening_slowdown_ratio=round(_p95(busy) / _p95(idle), 3),
                       studies_that_paused_the_round=len(pause_s),
                       pause_after_new_study_s_max=round(max(pause_s), 2) if pause_s else None,
                       train_process_peak_rss_mb=round(hwm, 1),
                       bench_process_peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                       train_process_round_epsilon=round(rnd.epsilon_round, 4) if rnd else None,
                       train_process_steps_done=rnd.steps_done if rnd else None)
        finally:
            ingest.close()
            box.close()
    return out


def _wait_running(db: Any, proc: subprocess.Popen[bytes], timeout_s: float = 600) -> None:
    """Until the training process is stepping (a round running, its step count moving)."""
    from edge_agent.learning import ledger

    end = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < end and proc.poll() is None:
        rs = ledger.rounds(db, limit=1)
        if rs and rs[0].state == "running":
            if seen is not None and rs[0].steps_done > seen:
                return
            seen = rs[0].steps_done if seen is None else seen
        threading.Event().wait(0.05)
    if proc.poll() is not None:
        raise RuntimeError(f"the training process ended ({proc.returncode}) during the benchmark")


def _wait_state(db: Any, state: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> float | None:
    """When the round entered ``state`` (its updated_at), waiting for it; None if it did not."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and proc.poll() is None:
        row = db.execute("SELECT state, updated_at FROM learning_rounds ORDER BY reserved_at DESC LIMIT 1").fetchone()
        if row and row[0] == state:
            return float(row[1])
        threading.Event().wait(0.02)
    return None
