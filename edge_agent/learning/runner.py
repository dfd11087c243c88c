"""One local training round, start to finish, in its own process.

``python -m edge_agent.learning.runner`` (what the scheduler spawns, and what
``mammo train run`` runs in its own process) does, in order:

1. take the runner lock (one round at a time on a box), read the box's state
   and ask the policy (``policy.decide``); record the decision and its reasons;
2. resume the generation's open round, or plan a new one over the confirmed
   studies (not the held-back women) and reserve its epsilon in the ledger
   (``ledger.reserve``: refused, with nothing spent, when over budget);
3. decrypt and preprocess the round's and the held-back studies in memory and
   compute the frozen features once per view;
4. run DP-SGD (``models.dp.run_round``) from the last sound checkpoint,
   asking between steps whether an inference job is waiting: if so it
   checkpoints, pauses within a step (well under a second here) and waits,
   holding its features, until the queue has been empty for
   ``train_resume_idle_s``; a closed window or SIGTERM ends the process with
   the round paused, and the next run resumes it;
5. judge the adapted part against the active one on the held-back women
   (``gate``); on "serve", build, sign with the box's local key and activate
   the adapted release (``serve``); place the update through the sink
   (idempotent by the round id, so a crash between placing and recording
   places it once), and close the round in the ledger.

Rounds always train from the release the federation knows (the active one,
or the base of the box's own adaptation when that is active), so the ledger's
generation and each update's base are the federation's release.

The process runs only on idle CPU time (``SCHED_IDLE``, else nice 19) with
one torch thread: screening keeps the box.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import sqlite_utils

from edge_agent.errors import BudgetExceeded, MammoError, TrainingError
from edge_agent.learning import checkpoint, examples, ledger, observe, policy
from edge_agent.learning import sink as sinks
from edge_agent.settings import Settings

if TYPE_CHECKING:
    from torch import nn

    from edge_agent.ingest.image_store import ImageStore
    from edge_agent.learning.gate import GateResult
    from models.dp import StudySet
    from models.release_files import Release
    from provisioning.keystore import Keystore

log = logging.getLogger(__name__)

LOCK_FILE = "runner.lock"
Judge = Callable[..., "GateResult"]  # gate.judge's signature: (labels, active, adapted, margin, min_cases, women=...) -> GateResult
WAIT_POLL_S = 0.5
MAX_PAUSE_WAIT_S = 1800.0  # a forced (technician's) round waits at most this long for screening to finish


def learning_dir(settings: Settings) -> Path:
    return settings.home / "learning"


@dataclass(frozen=True)
class RunOutcome:
    """What one run did; printed as JSON by the runner and ``mammo train run``."""

    status: str  # done | paused | refused | released | busy | failed
    reasons: tuple[str, ...] = ()
    round_id: str | None = None
    base_model_version: str | None = None
    steps_done: int = 0
    steps: int = 0
    pauses: int = 0
    examples: int = 0
    epsilon_round: float | None = None
    epsilon_spent: float | None = None
    epsilon_left: float | None = None
    update_id: str | None = None
    gate: dict[str, Any] | None = None
    gate_compared_with: str | None = None  # the model the adapted one had to beat: the one screening when the round ended
    served: dict[str, Any] | None = None  # what became of a "serve" verdict (serve.Served)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def policy_config(settings: Settings) -> policy.PolicyConfig:
    return policy.PolicyConfig(policy.Window.parse(settings.train_window), settings.train_max_load, settings.train_max_temp_c,
                               settings.train_require_mains, settings.train_min_new_examples, settings.train_min_examples,
                               settings.train_enabled)


class Preemption:
    """``should_stop`` for the training loop: an inference job waiting, or the process told to stop (SIGTERM)."""

    def __init__(self, db: sqlite_utils.Database, stop: threading.Event) -> None:
        self.db = db
        self.stop = stop
        self.reason: str | None = None

    def __call__(self) -> bool:
        if self.stop.is_set():
            self.reason = "stop requested"
        elif observe.queue_depth(self.db) > 0:
            self.reason = "screening"
        else:
            self.reason = None
        return self.reason is not None


@dataclass
class _Model:
    version: str
    release: Release
    net: nn.Module
    manifest_sha256: str


def active_model(db: sqlite_utils.Database, settings: Settings, keystore: Keystore | None = None) -> tuple[_Model, _Model]:
    """(the active release, the release rounds train from), each verified as inference verifies it, with its fp32 network.

    The same model unless the active one is the box's own adaptation: then
    rounds train from its base (``Activation.generation``), and the gate
    compares with the adaptation that is serving. ``keystore`` is needed
    only to verify the box's own adaptation.
    """
    from edge_agent.inference.activation import ModelRegistry

    registry = ModelRegistry(db, settings, keystore=keystore)
    act = registry.active() or registry.ensure_active()
    active = _load(*registry.verify(act.path))
    if act.generation == act.version:
        return active, active
    base = [r.path for r in registry.releases() if r.version == act.generation and r.source != "local"]
    if not base:
        raise TrainingError(f"The active model {act.version} was adapted from {act.generation}, which is no longer on this box; "
                            "no round can train. Fix: activate a signed release (`mammo model list`).")
    return active, _load(*registry.verify(base[-1]))


def _load(release: Release, digest: str) -> _Model:
    import torch

    from models.network import model_from_state_dict

    try:
        net = model_from_state_dict(torch.load(release.file("model_fp32.pt"), map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, KeyError) as exc:
        raise TrainingError(f"Model {release.version} has no usable fp32 weights ({exc}); local training needs model_fp32.pt.") from exc
    return _Model(release.version, release, net, digest)


def _active_is_local(db: sqlite_utils.Database, settings: Settings) -> bool:
    from edge_agent.inference.activation import ModelRegistry, is_local

    act = ModelRegistry(db, settings).active()
    return act is not None and is_local(act.path)


def plan(settings: Settings, n_train: int, prior: list[tuple[float, float, int]]) -> ledger.Plan:
    """The next round: Poisson rate from the expected batch, noise from the settings or from the epsilon one round may spend."""
    from models.dp import epsilon_of, noise_for_epsilon

    q = min(1.0, settings.train_batch_size / max(1, n_train))
    sigma = settings.train_noise_multiplier
    if sigma <= 0:
        target = epsilon_of(prior, settings.train_delta) + settings.train_round_epsilon
        sigma = noise_for_epsilon(target, q, settings.train_steps, settings.train_delta, prior)
    return ledger.Plan(sigma, settings.train_max_grad_norm, q, settings.train_steps, settings.train_delta)


def box_state(db: sqlite_utils.Database, settings: Settings, version: str, now: float | None = None) -> policy.BoxState:
    """Everything the policy looks at, read now (torch is loaded only when a fixed noise multiplier needs the accountant)."""
    items = examples.examples(db)
    train, _ = examples.split(items, settings.train_holdout_fraction)
    since = ledger.last_finished_at(db, version)
    budget = ledger.budget_of(db, version)
    spent = ledger.spent(db, version)
    left = (budget[0] if budget else settings.train_epsilon_budget) - spent
    if settings.train_noise_multiplier > 0 and train:
        from models.dp import epsilon_of

        prior = ledger.counted_history(db, version)
        p = plan(settings, len(train), prior)
        cost = epsilon_of([*prior, (p.noise_multiplier, p.sample_rate, p.steps)], p.delta) - epsilon_of(prior, p.delta)
    else:
        cost = settings.train_round_epsilon
    return policy.BoxState(
        local_time=observe.local_time(settings, now), queue_depth=observe.queue_depth(db), load_per_core=observe.load_per_core(),
        temp_c=observe.temperature_c(), on_mains=observe.on_mains(), examples=len(train),
        new_examples=sum(e.labelled_at > since for e in train), budget_left=left, round_epsilon=cost,
        open_round=ledger.open_round(db, version) is not None)


def _features(net: nn.Module, db: sqlite_utils.Database, store: ImageStore, labelled: list[tuple[str, int]], size: int,
              should_stop: Callable[[], bool], order: list[str] | None = None) -> StudySet | None:
    """Frozen features of the labelled studies (studies without a readable view left out); None if stopped.

    ``order``, when given, receives the study UIDs in the set's order (the gate resamples the held-back women by them)."""
    from models.dp import StudySet
    from models.trainable import frozen_features

    loaded = examples.load_studies(db, store, [u for u, _ in labelled], size, should_stop)
    if loaded is None:
        return None
    label = dict(labelled)
    if order is not None:
        order[:] = [s.study_uid for s in loaded]
    studies = [(frozen_features(net, s.images).numpy(), s.views, label[s.study_uid]) for s in loaded]
    if not studies:
        return StudySet(np.zeros((0, 1, 1, 1, 1), np.float32), np.zeros((0, 1), bool), np.zeros((0, 1), np.int64), np.zeros(0, np.float32))
    return StudySet.from_studies(studies)


def _wait_idle(db: sqlite_utils.Database, settings: Settings, stop: threading.Event, force_window: bool) -> bool:
    """Wait until the inference queue has been empty for train_resume_idle_s; False when the round should end paused instead."""
    cfg = policy_config(settings)
    idle_since: float | None = None
    started = time.monotonic()
    while not stop.is_set():
        if not force_window and not cfg.window.contains(observe.local_time(settings)):
            return False
        if time.monotonic() - started > MAX_PAUSE_WAIT_S:
            return False
        if observe.queue_depth(db) > 0:
            idle_since = None
        else:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= settings.train_resume_idle_s:
                return True
        stop.wait(WAIT_POLL_S)
    return False


class RunnerLock:
    """One training process per box: an exclusive flock on ``learning/runner.lock`` (released by the kernel when it dies)."""

    def __init__(self, settings: Settings) -> None:
        self.path = learning_dir(settings) / LOCK_FILE
        self._fh: IO[str] | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the life of the round
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        self._fh = fh
        return True

    def held_elsewhere(self) -> bool:
        if self.acquire():
            self.release()
            return False
        return True

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def run(settings: Settings, *, force_window: bool = False, seed: int | None = None, stop: threading.Event | None = None,
        wait_when_paused: bool = True, sink: sinks.UpdateSink | None = None, judge: Judge | None = None) -> RunOutcome:
    """One run: a new or resumed round, as far as the policy and screening allow (see the module docstring).

    ``sink`` and ``judge`` replace the settings' update sink and the gate's rule (``gate.judge``): tools and tests that
    need a known verdict pass their own, as they pass their own sink."""
    lock = RunnerLock(settings)
    if not lock.acquire():
        return RunOutcome("busy", ("another training process holds the runner lock",))
    try:
        from edge_agent.box import open_keystore
        from edge_agent.store import open_database

        db = open_database(settings.db_path, max_size_mb=settings.db_max_size_mb)
        keystore = functools.cache(lambda: open_keystore(settings, interactive=False))  # unlocked only when a round needs it
        try:
            return _run(db, settings, keystore, force_window=force_window, seed=seed,
                        stop=stop or threading.Event(), wait_when_paused=wait_when_paused, sink=sink, judge=judge)
        finally:
            db.conn.close()
    finally:
        lock.release()


def _run(db: sqlite_utils.Database, settings: Settings, keystore: Callable[[], Keystore], *, force_window: bool, seed: int | None,
         stop: threading.Event, wait_when_paused: bool, sink: sinks.UpdateSink | None, judge: Judge | None) -> RunOutcome:
    import torch

    from edge_agent.ingest.image_store import ImageStore
    from edge_agent.ingest.service import IngestPaths
    from models import dp
    from models.trainable import TrainablePart

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    serving, model = active_model(db, settings, keystore() if _active_is_local(db, settings) else None)
    version = model.version
    ledger.ensure_generation(db, version, settings.train_epsilon_budget, settings.train_delta)
    state = box_state(db, settings, version)
    decision = policy.decide(state, policy_config(settings), force_window=force_window)
    ledger.record_decision(db, decision.train, decision.reasons, {k: v for k, v in asdict(state).items()})

    def outcome(status: str, reasons: tuple[str, ...], rnd: ledger.Round | None = None, **kw: Any) -> RunOutcome:
        spent = ledger.spent(db, version)
        budget = ledger.budget_of(db, version)
        seconds["total"] = time.perf_counter() - t0
        return RunOutcome(status, reasons, rnd.round_id if rnd else None, version, examples=rnd.examples if rnd else 0,
                          steps=rnd.steps if rnd else 0, epsilon_round=rnd.epsilon_round if rnd else None, epsilon_spent=spent,
                          epsilon_left=None if budget is None else max(0.0, budget[0] - spent), seconds=dict(seconds), **kw)

    if not decision.train:
        return outcome("refused", decision.reasons)
    rnd = ledger.open_round(db, version)
    if rnd is None:
        train, _ = examples.split(examples.examples(db), settings.train_holdout_fraction)
        try:
            rnd = ledger.reserve(db, version, plan(settings, len(train), ledger.counted_history(db, version)),
                                 [(e.study_uid, e.label) for e in train], epsilon_of=dp.epsilon_of, seed=seed)
        except BudgetExceeded as exc:
            ledger.record_decision(db, False, (str(exc),), {"budget": "refused at reservation"})
            return outcome("refused", (str(exc),))
        log.info("round %s reserved: %d studies, noise %.2f, rate %.3f, %d steps, epsilon %.3f (total %.3f)", rnd.round_id[:8],
                 rnd.examples, rnd.noise_multiplier, rnd.sample_rate, rnd.steps, rnd.epsilon_round, rnd.epsilon_total)
    torch.set_num_threads(1)
    stopper = Preemption(db, stop)
    store = ImageStore(IngestPaths.of(settings).images, keystore().master_key())
    size = model.release.input_size
    t = time.perf_counter()
    labelled = ledger.round_studies(db, rnd.round_id)
    _, hold = examples.split(examples.examples(db), settings.train_holdout_fraction)
    woman_of = {e.study_uid: e.woman for e in hold}
    data = held = None
    pauses = 0
    while data is None or held is None:  # reading the images yields to screening too
        data = _features(model.net, db, store, labelled, size, stopper)
        held_uids: list[str] = []
        held = _features(model.net, db, store, [(e.study_uid, e.label) for e in hold], size, stopper, held_uids) if data is not None else None
        if data is None or held is None:
            pauses += 1
            if not (wait_when_paused and stopper.reason == "screening" and _wait_idle(db, settings, stop, force_window)):
                return outcome("paused", (f"paused before training: {stopper.reason}",), rnd, pauses=pauses, steps_done=rnd.steps_done)
    seconds["features"] = time.perf_counter() - t
    if len(data) == 0:
        ledger.release(db, rnd.round_id, "no readable images among the round's studies")
        return outcome("released", ("no readable images among the round's studies; the reservation was given back",), rnd)

    folder = learning_dir(settings)
    ck = checkpoint.path_of(folder, rnd.round_id)
    part = TrainablePart.from_model(model.net)
    spec = part.spec()
    resume: dp.RoundState | None = None
    body, why = checkpoint.read(ck)
    if body is not None:
        try:
            resume = dp.state_from_bytes(body)
            dp.check_spec(resume, spec)
            if resume.seed != rnd.seed or resume.step > rnd.steps:
                raise ValueError("checkpoint belongs to another round")
        except ValueError as exc:
            why = checkpoint.discard(ck, str(exc))
            resume = None
    notes = [f"checkpoint discarded: {why}"] if why else []
    if why:
        ledger.mark(db, rnd.round_id, "running", steps_done=0, detail=notes[0])
    cfg = dp.DPConfig(noise_multiplier=rnd.noise_multiplier, max_grad_norm=rnd.max_grad_norm, sample_rate=rnd.sample_rate, steps=rnd.steps,
                      lr=settings.train_lr, delta=rnd.delta, seed=rnd.seed, beta=model.release.operating_points.beta,
                      fallback_p_other=model.release.operating_points.fallback_p_other)

    def save(s: dp.RoundState) -> None:
        checkpoint.write(ck, dp.state_to_bytes(s))
        ledger.mark(db, rnd.round_id, "running", steps_done=s.step)

    t = time.perf_counter()
    ledger.mark(db, rnd.round_id, "running", steps_done=resume.step if resume else 0)
    while True:
        result = dp.run_round(part, data, cfg, state=resume, should_stop=stopper, on_checkpoint=save)
        if result.status == "done":
            break
        pauses += 1
        ledger.mark(db, rnd.round_id, "paused", steps_done=result.state.step, detail=f"paused: {stopper.reason}")
        log.info("round %s paused at step %d/%d: %s", rnd.round_id[:8], result.state.step, rnd.steps, stopper.reason)
        if not (wait_when_paused and stopper.reason == "screening" and _wait_idle(db, settings, stop, force_window)):
            seconds["train"] = time.perf_counter() - t
            return outcome("paused", (f"paused at step {result.state.step}: {stopper.reason}",), rnd, pauses=pauses,
                           steps_done=result.state.step)
        resume = result.state
        ledger.mark(db, rnd.round_id, "running", steps_done=resume.step, detail="resumed")
    seconds["train"] = time.perf_counter() - t

    from edge_agent.learning import gate, serve

    current = TrainablePart.from_model(serving.net)  # the model screening now: the base, or an earlier adaptation of it
    pts = model.release.operating_points
    verdict = (judge or gate.judge)(held.labels, gate.scores(current, held, pts.beta, pts.fallback_p_other),
                         gate.scores(part, held, pts.beta, pts.fallback_p_other), settings.train_gate_margin, settings.train_gate_min_cases,
                         women=[woman_of[u] for u in held_uids])
    served = None
    if verdict.decision == "serve":
        t = time.perf_counter()
        served = serve.serve(db, settings, keystore(), model.release, model.manifest_sha256, result.delta, rnd.round_id, verdict,
                             examples=len(data), epsilon=rnd.epsilon_round)
        seconds["serve"] = time.perf_counter() - t
        notes.append(f"adapted model {served.version}: {served.reason}")
    update = sinks.build_update(update_id=rnd.round_id, base_model_version=version, names=spec.names, shapes=spec.shapes, delta=result.delta,
                                example_count=len(data), epsilon=rnd.epsilon_round, delta_dp=rnd.delta, noise_multiplier=rnd.noise_multiplier,
                                local_metrics=verdict.metrics())
    update_id = (sink or sinks.resolve(settings.train_update_sink))(db, settings.home, update)
    ledger.record_gate(db, rnd.round_id, verdict.decision, active_auc=verdict.active_auc, adapted_auc=verdict.adapted_auc,
                       margin=settings.train_gate_margin, n_studies=verdict.n_studies, n_positive=verdict.n_positive, reason=verdict.reason,
                       weights_path=served.path if served else None)
    ledger.finish(db, rnd.round_id, update_id, steps_done=result.state.step, detail="; ".join([f"gate: {verdict.decision} ({verdict.reason})", *notes]))
    checkpoint.remove(ck)
    log.info("round %s done: update %s placed, gate %s", rnd.round_id[:8], update_id, verdict.decision)
    return outcome("done", (f"update placed; gate: {verdict.decision} ({verdict.reason})", *(notes[-1:] if served else ())), rnd,
                   steps_done=result.state.step, pauses=pauses, update_id=update_id, gate=ledger.gate_of(db, rnd.round_id),
                   gate_compared_with=serving.version, served=served.as_dict() if served else None)


def lower_priority() -> str:
    """Run this process only on CPU time screening leaves: SCHED_IDLE where Linux offers it, else nice 19.

    Set before torch starts its threads, which inherit it. Under SCHED_IDLE
    the kernel gives a runnable normal-priority thread (an inference worker)
    the CPU ahead of a training step already in progress, so the step that
    is running when a study arrives does not slow the study down.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        pass
    try:
        os.nice(19 - os.nice(0))
        return "nice 19"
    except OSError:
        return "unchanged"


def main(argv: list[str] | None = None) -> int:
    """The training process: prints the outcome as JSON on its last line; exit 0 unless it failed."""
    ap = argparse.ArgumentParser(prog="python -m edge_agent.learning.runner", description="Run (or resume) one local training round.")
    ap.add_argument("--config", default=None, help="settings TOML (default: $MAMMO_HOME/mammo.toml)")
    ap.add_argument("--force-window", action="store_true", help="ignore the training window (a technician's run)")
    ap.add_argument("--seed", type=int, default=None, help="round seed (tests only: a known seed lets anyone subtract the noise)")
    ap.add_argument("--no-wait", action="store_true", help="end paused instead of waiting for screening to finish")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    lower_priority()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        settings = Settings.load(Path(args.config) if args.config else None)
        out = run(settings, force_window=args.force_window, seed=args.seed, stop=stop, wait_when_paused=not args.no_wait)
    except MammoError as exc:
        out = RunOutcome("failed", (str(exc),))
    print(json.dumps(out.as_dict()), flush=True)
    return 1 if out.status == "failed" else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
