"""``mammo fl simulate``: local-only, federated (HE + DP) and centralized training on mini-MIAS clinics, per woman.

The data set is split into three clinics by the woman's density class (F, G,
D: non-IID) and into woman-level folds dealt within each clinic
(:mod:`models.fl_sim`).  For each fold:

1. **A stand-in release that never saw the fold's held-out women.** The
   shipped 0.1.0 was trained on every mini-MIAS woman, so adapting it and
   testing on them would leak.  Instead the whole network is trained, as the
   release recipe does (synthetic pretraining, then the real women, with
   augmentation), on the fold's training women of all three clinics only,
   with fewer epochs than the release (``backbone_epochs``; the 2-core
   budget).  Its frozen part is every arm's backbone, as the shipped
   release's is every box's.
2. **Arms**, all training only the trainable part (``models.trainable``:
   ``fuse`` + ``head``, 20,258 values) on frozen features, with the box's own
   loss on the study score (``models.dp``), from the same starting weights:

   * ``local_only``: each clinic alone, no privacy (its data never leaves);
   * ``local_only_dp``: each clinic alone, DP-SGD at the budget (what a box
     does on its own: issue 12's local adaptation);
   * ``federated_he_dp``: ``rounds`` rounds; in each, every clinic runs one
     DP round from the current global weights (``models.dp.run_round``, the
     box's code), its delta is CKKS-encrypted (``sync.he.encrypt``), the
     coordinator plans a FedBuff round (``sync.coordinator.strategy.plan_round``:
     weights by example count) and sums the ciphertexts with the PUBLIC
     context only (``strategy.aggregate``); the clinics decrypt the mean delta
     (``sync.he.decrypt``) and apply it.  Each clinic's rounds together spend
     ``epsilon`` at ``delta`` (the noise is planned for the whole composition);
   * ``federated_he``: the same without DP (what DP costs);
   * ``centralized``: all training women pooled, no privacy (the ceiling).

3. **Held-out women** are scored with each arm's weights (``local_*`` with
   their own clinic's) and pooled over folds; the woman-level AUC of the
   box's study score with a 95% bootstrap CI over women, overall and per
   clinic, and paired differences (:mod:`models.fl_sim`).

Everything runs in one process: no Flower deployment, no network, the same
functions the box and the coordinator call.  ``local_dp_adaptation`` is the
issue-12 demonstration on the same folds: each clinic's held-out AUC with the
stand-in release as it is, after one local DP round at the budget, and after
the same round without privacy.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SimConfig", "ARMS", "simulate", "merge", "tables_markdown"]

ARMS = ("local_only", "local_only_dp", "federated_he_dp", "federated_he", "centralized")


@dataclass(frozen=True)
class SimConfig:
    """Everything that decides a simulation (echoed in its JSON)."""

    data: str
    folds: int = 5
    seed: int = 0
    rounds: int = 5
    backbone_epochs: int = 40  # the release recipe uses 120; 40 fits the 2-core budget (see the module docstring)
    synthetic_pretrain: int = 400
    pretrain_epochs: int = 20
    plain_epochs: float = 20.0  # passes over a clinic's (or the pool's) women, non-private arms
    batch_women: int = 16  # expected Poisson batch, women
    lr: float = 0.005  # 0.05 saturated every probability at 1 on fold 0's TRAINING women (see the docs)
    dp_lr: float = 0.005  # the same optimiser as the non-private twin: the comparison isolates clipping and noise
    dp_steps: int = 20  # DP-SGD steps per clinic in all (local_only_dp: one round; federated: split over the rounds)
    clip: float = 1.0
    epsilon: float = 1.0
    delta: float = 1e-5
    beta: float = 0.5  # the release's contralateral weight (0.1.0 operating_points.beta)
    n_boot: int = 2000
    max_women: int = 0  # >0: the first women of each clinic only (tests)


def _seed(*parts: object) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def _subset(records: list[Any], max_women: int) -> list[Any]:
    if max_women <= 0:
        return records
    keep: dict[str, set[str]] = {}
    for r in records:
        mine = keep.setdefault(r.tissue, set())
        if len(mine) < max_women:
            mine.add(r.woman)
    chosen = set().union(*keep.values())
    return [r for r in records if r.woman in chosen]


def _federated(base: Any, data_by_clinic: dict[str, Any], cfg: SimConfig, fold: int, private: bool,
               he_ctx: tuple[Any, Any]) -> tuple[Any, dict[str, Any]]:
    """``cfg.rounds`` FedBuff rounds over encrypted deltas; returns the final part and what the rounds spent."""
    from models.dp import epsilon_of, run_round, train_plain
    from models.fl_sim import dp_config, plain_config
    from models.trainable import apply_delta
    from sync import he
    from sync.coordinator.strategy import Buffered, StrategyConfig, aggregate, plan_round
    from sync.update import TrainableSpec

    clinic_ctx, public_ctx = he_ctx
    part = copy.deepcopy(base)
    spec = part.spec()
    digest = TrainableSpec(spec.names, spec.shapes).digest
    strategy = StrategyConfig(buffer_k=len(data_by_clinic), min_updates=1)
    histories: dict[str, list[tuple[float, float, int]]] = {c: [] for c in data_by_clinic}
    bytes_per_update: list[int] = []
    for rnd in range(cfg.rounds):
        store: dict[str, bytes] = {}
        buffer: list[Buffered] = []
        for c, data in data_by_clinic.items():
            local = copy.deepcopy(part)
            s = _seed(cfg.seed, fold, c, rnd)
            if private:
                dcfg = dp_config(len(data), max(1, cfg.dp_steps // cfg.rounds), cfg.batch_women, cfg.clip, cfg.dp_lr, cfg.epsilon, cfg.delta, s,
                                 cfg.beta, rounds=cfg.rounds)
                res = run_round(local, data, dcfg)
                delta = res.delta
                histories[c] += res.state.history
            else:
                dcfg = plain_config(len(data), cfg.plain_epochs / cfg.rounds, cfg.batch_women, cfg.lr, s, cfg.beta)
                delta = train_plain(local, data, dcfg)
            ct = he.encrypt(clinic_ctx, delta)
            bytes_per_update.append(len(ct))
            sha = he.sha256(ct)
            store[sha] = ct
            buffer.append(Buffered(sha, f"clinic-{c}", f"{fold}-{rnd}-{c}", rnd, len(data),
                                   0.0, float(len(buffer)), digest))
        plan = plan_round(buffer, current_generation=rnd, spec_digest=digest, now=float(len(buffer)), config=strategy)
        if plan is None or len(plan.contributions) != len(buffer):
            raise RuntimeError(f"round {rnd}: the strategy did not take every clinic's update ({plan})")
        mean = he.decrypt(clinic_ctx, aggregate(plan, public_ctx, store.__getitem__, expect_values=spec.size))
        part.load_state_dict(apply_delta(part.state_dict(), spec, mean))
    spent = {c: (epsilon_of(h, cfg.delta) if private else float("inf")) for c, h in histories.items()}
    return part, {"epsilon_by_clinic": spent, "bytes_per_update": max(bytes_per_update)}


def _fold(records: list[Any], arrays: Any, split: Any, women: Any, fold: int, cfg: SimConfig, pre: dict[str, Any] | None,
          he_ctx: tuple[Any, Any], say: Callable[[str], None]) -> dict[str, Any]:
    """Train the fold's stand-in release and every arm; return per-arm prediction rows and what DP spent."""
    from models.dp import run_round, train_plain
    from models.fl_sim import CLINICS, dp_config, fold_release, image_probabilities, plain_config, prediction_rows, study_set
    from models.trainable import TrainablePart, frozen_features

    tr_all, te_all = split.train_test(fold)
    model = fold_release(arrays, tr_all, cfg.backbone_epochs, cfg.seed, pre)
    say(f"fold {fold}: stand-in release trained on {len(tr_all)} images")
    feats = frozen_features(model, arrays.images).numpy()
    base = TrainablePart.from_model(model)
    clinics = [c for c in CLINICS if len(split.train_test(fold, c)[1])]
    data = {c: study_set(feats, records, women, women.among(split.train_test(fold, c)[0])) for c in clinics}
    rows: dict[str, list[dict[str, Any]]] = {a: [] for a in (*ARMS, "release", "adapted_dp", "adapted_plain")}
    spent: dict[str, Any] = {}

    def score(part: Any, idx: Any) -> list[dict[str, Any]]:
        return prediction_rows(records, idx, image_probabilities(part, feats, idx), split.clinic, fold)

    for c in clinics:
        te = split.train_test(fold, c)[1]
        s = _seed(cfg.seed, fold, c, "local")
        plain = copy.deepcopy(base)
        train_plain(plain, data[c], plain_config(len(data[c]), cfg.plain_epochs, cfg.batch_women, cfg.lr, s, cfg.beta))
        rows["local_only"] += score(plain, te)
        dcfg = dp_config(len(data[c]), cfg.dp_steps, cfg.batch_women, cfg.clip, cfg.dp_lr, cfg.epsilon, cfg.delta, s, cfg.beta)
        private = copy.deepcopy(base)
        res = run_round(private, data[c], dcfg)
        rows["local_only_dp"] += score(private, te)
        spent[c] = {"epsilon": res.epsilon, "noise_multiplier": dcfg.noise_multiplier, "sample_rate": dcfg.sample_rate,
                    "steps": dcfg.steps, "n_women": len(data[c])}
        # issue 12: the same DP round is the local adaptation; its non-private twin takes the same steps
        twin = copy.deepcopy(base)
        twin_delta = train_plain(twin, data[c], dcfg)
        spent[c].update({"delta_norm_dp": float(np.linalg.norm(res.delta)), "delta_norm_plain": float(np.linalg.norm(twin_delta))})
        rows["release"] += score(base, te)
        rows["adapted_dp"] += score(private, te)
        rows["adapted_plain"] += score(twin, te)
    say(f"fold {fold}: local arms done")
    fed, fed_info = _federated(base, data, cfg, fold, True, he_ctx)
    rows["federated_he_dp"] += score(fed, te_all)
    fed_plain, _ = _federated(base, data, cfg, fold, False, he_ctx)
    rows["federated_he"] += score(fed_plain, te_all)
    say(f"fold {fold}: federated arms done")
    pooled = study_set(feats, records, women, women.among(tr_all))
    central = copy.deepcopy(base)
    train_plain(central, pooled, plain_config(len(pooled), cfg.plain_epochs, cfg.batch_women, cfg.lr,
                                              _seed(cfg.seed, fold, "central"), cfg.beta))
    rows["centralized"] += score(central, te_all)
    return {"rows": rows, "local_dp": spent, "federated": fed_info}


def _table(rows: list[dict[str, Any]], cfg: SimConfig) -> dict[str, Any]:
    from models.fl_sim import CLINICS, woman_auc

    out: dict[str, Any] = {"all": woman_auc(rows, cfg.beta, cfg.n_boot, cfg.seed)}
    for c in CLINICS:
        mine = [r for r in rows if r["clinic"] == c]
        if mine:
            out[c] = woman_auc(mine, cfg.beta, cfg.n_boot, cfg.seed)
    return out


def _paired(rows: dict[str, list[dict[str, Any]]], a: str, b: str, cfg: SimConfig) -> dict[str, Any]:
    from models.fl_sim import CLINICS, paired_auc_difference

    def key(r: dict[str, Any]) -> str:
        return str(r["ref"])

    ra, rb = sorted(rows[a], key=key), sorted(rows[b], key=key)
    out = {"all": paired_auc_difference(ra, rb, cfg.beta, cfg.n_boot, cfg.seed)}
    for c in CLINICS:
        ma, mb = [r for r in ra if r["clinic"] == c], [r for r in rb if r["clinic"] == c]
        if ma:
            out[c] = paired_auc_difference(ma, mb, cfg.beta, cfg.n_boot, cfg.seed)
    return out


def _pretrain(cfg: SimConfig, cache: Path | None) -> dict[str, Any] | None:
    """The synthetic pretraining (no real woman in it), computed once per config and seed when ``cache`` is given."""
    import torch

    from models.training import TrainConfig, pretrain_state

    tc = TrainConfig(synthetic_pretrain=cfg.synthetic_pretrain, pretrain_epochs=cfg.pretrain_epochs, seed=cfg.seed, threads=1)
    key = f"synthetic{cfg.synthetic_pretrain}-epochs{cfg.pretrain_epochs}-seed{cfg.seed}"
    if cache is not None and cache.exists():
        saved = torch.load(cache, weights_only=True)
        if saved.get("key") == key:
            return dict(saved["state"])
    state = pretrain_state(tc)
    if cache is not None and state is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({"key": key, "state": state}, tmp)
        tmp.replace(cache)
    return state


def simulate(cfg: SimConfig, say: Callable[[str], None] = lambda s: None, only_folds: list[int] | None = None,
             pretrain_cache: Path | None = None) -> dict[str, Any]:
    """Run the experiment (see the module docstring) and return its JSON-ready result.

    ``only_folds``: run just these folds and return a *partial* result; :func:`merge` joins
    partials that cover every fold (separate processes, the same config) into the whole.
    The synthetic pretraining is deterministic under the seed; ``pretrain_cache`` keeps it in a
    file so that processes run side by side do not each repeat it.
    """
    import torch

    from models.data import read_folder
    from models.fl_sim import Women, split_clinics
    from models.training import build_arrays
    from provisioning import he as he_material

    torch.set_num_threads(1)
    t0 = time.monotonic()
    records = _subset(read_folder(Path(cfg.data)), cfg.max_women)
    split = split_clinics(records, cfg.folds, cfg.seed)
    women = Women.of(records)
    folds = list(range(cfg.folds)) if only_folds is None else sorted(set(only_folds))
    if not folds or any(not 0 <= f < cfg.folds for f in folds):
        raise ValueError(f"folds must be between 0 and {cfg.folds - 1}, got {only_folds}")
    arrays = build_arrays(records)
    pre = _pretrain(cfg, pretrain_cache)
    say(f"data and synthetic pretraining ready ({time.monotonic() - t0:.0f} s)")
    material = he_material.make_material()
    he_ctx = (he_material.load_context(material.secret, need_secret=True),
              he_material.load_context(material.public, need_secret=False))
    partial: dict[str, Any] = {"config": asdict(cfg), "folds": folds, "rows": {}, "local_dp": {}, "federated": {}}
    for fold in folds:
        out = _fold(records, arrays, split, women, fold, cfg, pre, he_ctx, say)
        for arm, rs in out["rows"].items():
            partial["rows"].setdefault(arm, []).extend(rs)
        partial["local_dp"][str(fold)] = out["local_dp"]
        partial["federated"][str(fold)] = out["federated"]
    partial["seconds"] = round(time.monotonic() - t0, 1)
    partial["women_by_clinic"] = {c: int(len({r.woman for r, k in zip(records, split.clinic, strict=True) if k == c}))
                                  for c in sorted(set(split.clinic.tolist()))}
    partial["n_women"] = len(women.ids)
    return partial if only_folds is not None else merge([partial])


def merge(partials: list[dict[str, Any]]) -> dict[str, Any]:
    """Join partial results (same config, every fold exactly once) and compute the tables."""
    cfg = SimConfig(**partials[0]["config"])
    if any(p["config"] != partials[0]["config"] for p in partials):
        raise ValueError("partial results were made with different configs; rerun them with the same options")
    folds = sorted(f for p in partials for f in p["folds"])
    if folds != list(range(cfg.folds)):
        raise ValueError(f"the partial results cover folds {folds}, not each of 0..{cfg.folds - 1} once")
    rows: dict[str, list[dict[str, Any]]] = {}
    local_dp: dict[str, Any] = {}
    federated: dict[str, Any] = {}
    for p in partials:
        for arm, rs in p["rows"].items():
            rows.setdefault(arm, []).extend(rs)
        local_dp.update(p["local_dp"])
        federated.update(p["federated"])
    arms = {a: _table(rows[a], cfg) for a in ARMS}
    comparisons = {f"{b} - {a}": _paired(rows, a, b, cfg) for a, b in (
        ("local_only_dp", "federated_he_dp"), ("local_only", "federated_he_dp"), ("federated_he_dp", "centralized"),
        ("federated_he_dp", "federated_he"), ("local_only", "centralized"))}
    adaptation = {
        "before": _table(rows["release"], cfg),
        "after_dp": _table(rows["adapted_dp"], cfg),
        "after_plain": _table(rows["adapted_plain"], cfg),
        "after_dp - before": _paired(rows, "release", "adapted_dp", cfg),
        "after_plain - before": _paired(rows, "release", "adapted_plain", cfg),
        "privacy_by_fold": [local_dp[str(f)] for f in range(cfg.folds)],
    }
    return {
        "config": asdict(cfg),
        "n_women": partials[0]["n_women"],
        "women_by_clinic": partials[0]["women_by_clinic"],
        "arms": arms,
        "comparisons": comparisons,
        "federated_by_fold": [federated[str(f)] for f in range(cfg.folds)],
        "local_dp_adaptation": adaptation,
        "predictions": {a: rows[a] for a in rows},
        "seconds_by_process": [p["seconds"] for p in partials],
    }


def _cell(block: dict[str, Any] | None, key: str = "auc") -> str:
    if not block or block.get(key) is None:
        return "n/a"
    lo, hi = block["ci95"]
    if lo is None or hi is None:
        return f"{block[key]:.3f}"
    return f"{block[key]:+.3f} ({lo:+.3f} to {hi:+.3f})" if key == "difference" else f"{block[key]:.3f} ({lo:.3f}-{hi:.3f})"


_ARM_NAMES = {
    "local_only": "local only, no DP",
    "local_only_dp": "local only, DP (the box alone)",
    "federated_he_dp": "federated, HE + DP",
    "federated_he": "federated, HE, no DP",
    "centralized": "centralized (pooled), no DP",
}


def tables_markdown(result: dict[str, Any]) -> str:
    """The docs' tables from a result (``--out`` file): AUC per woman with 95% CIs, paired differences, privacy spent."""
    cols = ["all", "F", "G", "D"]
    n = result["arms"]["centralized"]
    head = "| | " + " | ".join(f"{c} ({n[c]['n_women']} women, {n[c]['n_abnormal']} with a finding)" for c in cols) + " |"
    sep = "|---" * (len(cols) + 1) + "|"
    out = ["### Woman-level AUC of the study score (95% CI, bootstrap over women)", "", head, sep]
    for arm in ARMS:
        out.append(f"| {_ARM_NAMES[arm]} | " + " | ".join(_cell(result["arms"][arm].get(c)) for c in cols) + " |")
    out += ["", "### Paired differences (same women, one bootstrap for both arms)", "", "| | " + " | ".join(cols) + " |", sep]
    for name, blocks in result["comparisons"].items():
        b, a = name.split(" - ")
        out.append(f"| {_ARM_NAMES[b]} minus {_ARM_NAMES[a]} | " + " | ".join(_cell(blocks.get(c), "difference") for c in cols) + " |")
    ad = result["local_dp_adaptation"]
    out += ["", "### Local DP adaptation per clinic (woman-level AUC, 95% CI)", "",
            "| clinic | stand-in release as it is | after one local DP round | after the same round without DP | DP minus before | no-DP minus before |",
            "|---|---|---|---|---|---|"]
    for c in cols:
        out.append(f"| {c} | {_cell(ad['before'].get(c))} | {_cell(ad['after_dp'].get(c))} | {_cell(ad['after_plain'].get(c))} | "
                   f"{_cell(ad['after_dp - before'].get(c), 'difference')} | {_cell(ad['after_plain - before'].get(c), 'difference')} |")
    out += ["", "### What the DP rounds were (per fold and clinic)", "",
            "| fold | clinic | training women | sample rate | steps | noise multiplier | epsilon (delta 1e-5) | norm of the DP delta | norm of the no-DP delta |",
            "|---|---|---|---|---|---|---|---|---|"]
    for f, fold in enumerate(ad["privacy_by_fold"]):
        for c, v in fold.items():
            out.append(f"| {f} | {c} | {v['n_women']} | {v['sample_rate']:.2f} | {v['steps']} | {v['noise_multiplier']:.2f} | "
                       f"{v['epsilon']:.3f} | {v['delta_norm_dp']:.2f} | {v['delta_norm_plain']:.2f} |")
    fed = result["federated_by_fold"]
    secs = result["seconds_by_process"]
    eps = [e for fold in fed for e in fold["epsilon_by_clinic"].values() if e is not None]
    out += ["", f"Federated, HE + DP: each clinic's {result['config']['rounds']} rounds together spent epsilon "
            f"{min(eps):.3f}-{max(eps):.3f} at delta {result['config']['delta']:g}; one encrypted update was "
            f"{max(f['bytes_per_update'] for f in fed):,} bytes. Wall-clock time: {len(secs)} process(es) side by side, "
            f"{min(secs):.0f}-{max(secs):.0f} s each."]
    return "\n".join(out) + "\n"
