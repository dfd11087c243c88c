"""One round of differentially private local training (DP-SGD with Opacus) over frozen features.

**The privacy unit is the woman.** One example is one confirmed study: all of
its views' frozen features (:func:`models.trainable.frozen_features`), its
label from the radiologist, and its loss on the box's own study score
(:func:`models.trainable.study_scores`, the maximum over views). Opacus
computes one gradient per study (the trainable part is called once per view
slot with the batch of studies, and its hooks add a woman's view gradients
together), clips it to ``max_grad_norm`` and adds Gaussian noise, so the
(epsilon, delta) guarantee covers everything a woman contributed, not one
image.

How a round runs, and why:

* **Poisson sampling, drawn here.** Step ``t`` includes each study with
  probability ``sample_rate`` from a generator seeded by ``(seed, t)``, and
  its noise comes from a generator seeded by ``(seed, t, "noise")``. So the
  round is deterministic under its seed, and resuming at step ``t`` needs
  nothing but the step number: a round killed and resumed from a checkpoint
  ends with exactly the weights of one never interrupted. The seed is drawn
  from the OS (``secrets``) for a real round and stays on the box: whoever
  knew it could subtract the noise.
* **RDP accounting** (Opacus ``RDPAccountant``) over the steps taken:
  ``(noise_multiplier, sample_rate, steps)``. :func:`epsilon_of` composes a
  whole history, so the box's ledger can compute a round's cost before it
  starts and refuse one that would exceed the budget.
* **Preemption and checkpoints.** ``should_stop()`` is asked between steps;
  ``on_checkpoint(state)`` receives a :class:`RoundState` every
  ``checkpoint_every`` steps and at a stop (the caller writes it durably:
  ``edge_agent.learning.checkpoint``). An empty Poisson batch still takes a
  noise-only step, as DP-SGD requires.
* **Loss.** Binary cross-entropy on the study score mapped into [0, 1]
  (``(score + beta) / (1 + beta)``, monotone, so its ranking is the score's).

No I/O here: the caller loads features, writes checkpoints and records the
ledger.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.trainable import PartSpec, TrainablePart, flatten, study_scores

__all__ = [
    "DPConfig",
    "RoundResult",
    "RoundState",
    "StudySet",
    "epsilon_of",
    "noise_for_epsilon",
    "per_study_gradients",
    "check_spec",
    "run_round",
    "state_from_bytes",
    "state_to_bytes",
    "train_plain",
]

#: RDP orders: Opacus' defaults plus larger ones, which the heavy noise of small clinics needs for a tight bound.
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [64, 80, 96, 128, 160, 192, 256, 384, 512, 1024]

History = Sequence[tuple[float, float, int]]  # (noise_multiplier, sample_rate, steps), Opacus' RDP history


@dataclass(frozen=True)
class DPConfig:
    """One round's training and privacy parameters (recorded in the ledger as they are)."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    lr: float = 0.05
    momentum: float = 0.9
    delta: float = 1e-5
    seed: int = 0
    checkpoint_every: int = 10
    beta: float = 0.5  # the release's contralateral weight (operating_points.beta)
    fallback_p_other: float | None = None  # the release's stand-in for a missing other breast

    def __post_init__(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 1 or self.max_grad_norm <= 0 or self.noise_multiplier < 0:
            raise ValueError("steps >= 1, max_grad_norm > 0 and noise_multiplier >= 0 are required")


@dataclass(frozen=True)
class StudySet:
    """Studies as padded arrays: ``features`` (N, V, feat, h, w) float32, ``mask`` (N, V) bool,
    ``other`` (N, V) int64 (:func:`models.trainable.pair_views`, -1 none), ``labels`` (N,) 0/1."""

    features: np.ndarray
    mask: np.ndarray
    other: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        if not (self.features.shape[:2] == self.mask.shape == self.other.shape and self.mask.shape[0] == n):
            raise ValueError("features, mask, other and labels disagree on the number of studies or views")

    def __len__(self) -> int:
        return int(len(self.labels))

    @classmethod
    def from_studies(cls, studies: Sequence[tuple[np.ndarray, Sequence[tuple[str, str]], int]]) -> StudySet:
        """From ``(features (n_views, feat, h, w), [(laterality, view), ...] in arrival order, label)`` per study."""
        from models.trainable import pair_views

        if not studies:
            raise ValueError("no studies")
        v = max(len(f) for f, _, _ in studies)
        shape = studies[0][0].shape[1:]
        feats = np.zeros((len(studies), v, *shape), np.float32)
        mask = np.zeros((len(studies), v), bool)
        other = np.full((len(studies), v), -1, np.int64)
        labels = np.zeros(len(studies), np.float32)
        for i, (f, views, label) in enumerate(studies):
            feats[i, :len(f)] = f
            mask[i, :len(f)] = True
            other[i, :len(f)] = pair_views(views)
            labels[i] = float(label)
        return cls(feats, mask, other, labels)

    def subset(self, idx: np.ndarray) -> StudySet:
        return StudySet(self.features[idx], self.mask[idx], self.other[idx], self.labels[idx])


@dataclass
class RoundState:
    """Everything a round needs to resume: step, weights, optimizer, accountant history, seed.

    The random state is the seed plus the step: each step's sample and noise
    come from generators seeded by them (see the module docstring).
    """

    step: int
    part_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    history: list[tuple[float, float, int]]
    seed: int
    losses: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class RoundResult:
    status: str  # done | paused
    state: RoundState
    epsilon: float  # of the steps taken in this round alone (composition across rounds: the ledger, epsilon_of)
    delta: np.ndarray  # trainable part, new minus base (zeros while paused)


def epsilon_of(history: History, delta: float) -> float:
    """Epsilon at ``delta`` of a composed RDP history (0 for none); noise 0 means no privacy (inf)."""
    from opacus.accountants import RDPAccountant

    steps = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    if not steps:
        return 0.0
    if any(s <= 0 for s, _, _ in steps):
        return float("inf")
    acc = RDPAccountant()
    acc.history = steps
    with warnings.catch_warnings():
        # large noise multipliers put the optimal order at the end of the range: the bound is still valid, only looser
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(acc.get_epsilon(delta=delta, alphas=ALPHAS))


def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float, prior: History = ()) -> float:
    """The smallest noise multiplier (to 1%) whose round, composed after ``prior``, stays within ``target_epsilon`` in total.

    Used to plan a round that spends a set share of the budget.
    """
    if epsilon_of(list(prior), delta) >= target_epsilon:
        raise ValueError("the prior rounds already spend the target epsilon")
    lo, hi = 0.05, 1.0
    while epsilon_of([*prior, (hi, sample_rate, steps)], delta) > target_epsilon:
        hi *= 2
        if hi > 1e4:
            raise ValueError("no noise multiplier reaches that epsilon")
    while hi - lo > 0.01 * hi:
        mid = (lo + hi) / 2
        if epsilon_of([*prior, (mid, sample_rate, steps)], delta) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def _seed_of(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _loss(part: TrainablePart, data: StudySet, idx: np.ndarray, cfg: DPConfig) -> torch.Tensor:
    feats = torch.from_numpy(data.features[idx])
    scores = study_scores(part, feats, torch.from_numpy(data.mask[idx]), torch.from_numpy(data.other[idx]), cfg.beta,
                          cfg.fallback_p_other)
    q = ((scores + cfg.beta) / (1.0 + cfg.beta)).clamp(1e-6, 1 - 1e-6)
    return torch.nn.functional.binary_cross_entropy(q, torch.from_numpy(data.labels[idx]), reduction="mean")


def _backward(loss: torch.Tensor) -> None:
    with warnings.catch_warnings():
        # the frozen features need no gradient; Opacus' full backward hooks then fire on outputs only, which is what they read
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect to module outputs")
        loss.backward()


def _batch(n: int, cfg: DPConfig, seed: int, step: int) -> np.ndarray:
    g = torch.Generator().manual_seed(_seed_of(seed, step, "sample"))
    return np.flatnonzero((torch.rand(n, generator=g) < cfg.sample_rate).numpy())


def run_round(part: TrainablePart, data: StudySet, cfg: DPConfig, *, state: RoundState | None = None,
              should_stop: Callable[[], bool] = lambda: False,
              on_checkpoint: Callable[[RoundState], None] = lambda s: None) -> RoundResult:
    """Run (or resume, from ``state``) one DP-SGD round of ``cfg.steps`` steps on ``part`` in place.

    ``part`` must hold the BASE weights when ``state`` is None; with a state,
    its weights are replaced by the state's. The returned ``delta`` is the
    flat change of the trainable part against the base (``base`` is what
    ``part`` held at step 0, kept in the state's first checkpoint).
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.validators import ModuleValidator

    if len(data) == 0:
        raise ValueError("a round needs at least one study")
    spec = part.spec()
    gsm = GradSampleModule(part, batch_first=True, loss_reduction="mean", strict=True)
    ModuleValidator.validate(gsm, strict=True)
    params = [p for p in part.parameters() if p.requires_grad]
    base_opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    noise_gen = torch.Generator()
    opt = DPOptimizer(base_opt, noise_multiplier=cfg.noise_multiplier, max_grad_norm=cfg.max_grad_norm,
                      expected_batch_size=max(1, round(cfg.sample_rate * len(data))), loss_reduction="mean", generator=noise_gen)
    if state is None:
        state = RoundState(0, part.trainable_state(), {}, [], cfg.seed)
        base = flatten(state.part_state, spec)
        state.optimizer_state = {"base": base}
    else:
        part.load_state_dict({**part.state_dict(), **state.part_state})
        base = np.asarray(state.optimizer_state["base"], np.float32)
        if state.optimizer_state.get("sgd"):
            base_opt.load_state_dict(state.optimizer_state["sgd"])
    part.train()

    def snapshot() -> RoundState:
        return RoundState(state.step, part.trainable_state(), {"base": base, "sgd": base_opt.state_dict()}, list(state.history),
                          state.seed, list(state.losses))

    try:
        while state.step < cfg.steps:
            if should_stop():
                snap = snapshot()
                on_checkpoint(snap)
                return RoundResult("paused", snap, epsilon_of(snap.history, cfg.delta), np.zeros(spec.size, np.float32))
            idx = _batch(len(data), cfg, state.seed, state.step)
            noise_gen.manual_seed(_seed_of(state.seed, state.step, "noise"))
            opt.zero_grad(set_to_none=True)
            if len(idx):
                loss = _loss(part, data, idx, cfg)
                _backward(loss)
                state.losses.append(float(loss.detach()))
            else:  # nobody sampled: clip nothing, add the noise all the same
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape))
            opt.step()
            state.step += 1
            _add_step(state.history, cfg.noise_multiplier, cfg.sample_rate)
            if state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps:
                on_checkpoint(snapshot())
    finally:
        gsm._close()
    snap = snapshot()
    delta = flatten(snap.part_state, spec) - base
    return RoundResult("done", snap, epsilon_of(snap.history, cfg.delta), delta.astype(np.float32))


def per_study_gradients(part: TrainablePart, data: StudySet, idx: np.ndarray, cfg: DPConfig) -> dict[str, torch.Tensor]:
    """The per-example gradients Opacus clips for studies ``idx``: name -> (len(idx), *shape), one row per STUDY.

    What :func:`run_round` clips and noises; exposed so a test can check that the
    privacy unit is the woman (one row per study, all her views summed in).
    """
    from opacus import GradSampleModule

    gsm = GradSampleModule(part, batch_first=True, loss_reduction="mean", strict=True)
    try:
        part.zero_grad(set_to_none=True)
        _backward(_loss(part, data, idx, cfg))
        names = set(part.spec().names)
        out = {n: p.grad_sample.detach().clone() for n, p in part.named_parameters() if n in names}
        for p in part.parameters():
            p.grad_sample = None
            p.grad = None
        return out
    finally:
        gsm._close()


def _add_step(history: list[tuple[float, float, int]], noise: float, rate: float) -> None:
    if history and history[-1][0] == noise and history[-1][1] == rate:
        history[-1] = (noise, rate, history[-1][2] + 1)
    else:
        history.append((noise, rate, 1))


def train_plain(part: TrainablePart, data: StudySet, cfg: DPConfig) -> np.ndarray:
    """The same round without privacy (same sampling, steps and optimizer; no clipping, no noise): the peer of
    ``mammo bench train``. Returns the delta."""
    spec = part.spec()
    params = [p for p in part.parameters() if p.requires_grad]
    base = flatten(part.trainable_state(), spec)
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    part.train()
    for step in range(cfg.steps):
        idx = _batch(len(data), cfg, cfg.seed, step)
        if not len(idx):
            continue
        opt.zero_grad(set_to_none=True)
        _backward(_loss(part, data, idx, cfg))
        opt.step()
    return (flatten(part.trainable_state(), spec) - base).astype(np.float32)


def state_to_bytes(state: RoundState) -> bytes:
    """Serialize a state (torch.save of plain tensors, arrays and numbers only)."""
    buf = io.BytesIO()
    torch.save({"step": state.step, "part_state": state.part_state, "optimizer_state": {
        "base": torch.from_numpy(np.asarray(state.optimizer_state["base"], np.float32)),
        "sgd": state.optimizer_state.get("sgd") or {}}, "history": [list(h) for h in state.history], "seed": state.seed,
        "losses": state.losses}, buf)
    return buf.getvalue()


def state_from_bytes(data: bytes) -> RoundState:
    """Inverse of :func:`state_to_bytes` (``weights_only``: a checkpoint cannot run code). Raises ValueError when unreadable."""
    try:
        d = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return RoundState(int(d["step"]), dict(d["part_state"]),
                          {"base": d["optimizer_state"]["base"].numpy(), "sgd": d["optimizer_state"]["sgd"]},
                          [(float(s), float(q), int(n)) for s, q, n in d["history"]], int(d["seed"]), [float(x) for x in d["losses"]])
    except Exception as exc:  # torch raises pickle, zip and runtime errors for damaged files
        raise ValueError(f"checkpoint unreadable ({type(exc).__name__}: {exc})") from exc


def check_spec(state: RoundState, spec: PartSpec) -> None:
    """Raise ValueError if a checkpoint's weights do not fit ``spec`` (another model generation)."""
    for name, shape in zip(spec.names, spec.shapes, strict=True):
        if name not in state.part_state or tuple(state.part_state[name].shape) != shape:
            raise ValueError(f"checkpoint does not match the trainable part ({name})")
