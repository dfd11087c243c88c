"""Woman-level k-fold cross-validation of the training recipe.

The CV estimates the PROCEDURE (preprocess + recipe), and the released model is
the same procedure run on every woman. Each fold writes its out-of-fold
predictions to ``<out>/fold<k>.json`` so folds can run in separate processes
(two cores: two folds at a time) and a crashed run only redoes its fold;
:func:`collect` merges them into the metrics the model card quotes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from models.data import Record, woman_folds
from models.evaluation import pointing_hit, roc_auc, summarize
from models.release_files import CONTRALATERAL_BETA, suspicion
from models.training import Arrays, TrainConfig, predict, save_json, train

__all__ = ["run_fold", "collect", "peak_hits", "add_contralateral", "woman_scores", "compare_rows", "main"]


def peak_hits(maps: np.ndarray, arrays: Arrays, idx: np.ndarray) -> list[bool | None]:
    """Pointing game per image in model space (None when no lesion circle)."""
    out: list[bool | None] = []
    s = arrays.images.shape[-1]
    for j, i in enumerate(idx):
        if not arrays.circles[i]:
            out.append(None)
            continue
        m = torch.from_numpy(maps[j : j + 1, :1])
        heat = torch.nn.functional.interpolate(m, size=(s, s), mode="bilinear", align_corners=False)
        heat = heat[0, 0].numpy()
        heat = np.where(arrays.masks[i], heat, -1e9)
        out.append(pointing_hit(heat, arrays.circles[i]))
    return out


def run_fold(records: list[Record], arrays: Arrays, fold: int, k: int, cfg: TrainConfig, out: Path,
             progress: bool = True, split_seed: int = 0, init_state: dict | None = None, log=None) -> Path:
    """Train on the other folds, predict this one, write ``fold<k>.json``."""
    folds = np.asarray(woman_folds(records, k=k, seed=split_seed))
    tr, te = np.nonzero(folds != fold)[0], np.nonzero(folds == fold)[0]
    assert not set(records[i].woman for i in tr) & set(records[i].woman for i in te)
    out.mkdir(parents=True, exist_ok=True)
    model = train(arrays, tr, cfg, checkpoint=out / f"fold{fold}.ckpt", progress=progress,
                  init_state=init_state, log=log)
    probs, maps = predict(model, arrays.inputs(te, cfg.pair))
    hits = peak_hits(maps, arrays, te)
    rows = [
        {"ref": records[i].ref, "woman": records[i].woman, "fold": fold,
         "abnormal": records[i].abnormal, "malignant": records[i].malignant,
         "tissue": records[i].tissue, "p_abnormal": float(probs[j, 0]),
         "p_malignant": float(probs[j, 1]), "peak_in_lesion": hits[j]}
        for j, i in enumerate(te)
    ]
    torch.save(model.state_dict(), out / f"fold{fold}.pt")
    path = out / f"fold{fold}.json"
    save_json(path, {"config": asdict(cfg), "fold": fold, "k": k, "rows": rows})
    return path


def add_contralateral(rows: list[dict], beta: float) -> list[dict]:
    """Add ``p_other`` (the same woman's other breast) and ``suspicion``
    (``p_abnormal - beta * p_other``, see :func:`models.release_files.suspicion`)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["woman"], []).append(r)
    out = []
    for r in rows:
        mates = [o for o in by[r["woman"]] if o is not r]
        p_other = mates[0]["p_abnormal"] if len(mates) == 1 else None
        out.append({**r, "p_other": p_other, "suspicion": suspicion(r["p_abnormal"], p_other, beta, None)})
    return out


def collect(out: Path, k: int = 5, n_boot: int = 2000, beta: float = CONTRALATERAL_BETA) -> dict:
    """Merge ``fold*.json`` into CV metrics (with 95% CIs by woman).

    The abnormal figures use the contralateral suspicion score (what the box
    triages on); the single-image figures are kept beside them for comparison.
    """
    rows = []
    for f in range(k):
        rows += json.loads((out / f"fold{f}.json").read_text())["rows"]
    rows = add_contralateral(rows, beta)
    g = lambda key: [r[key] for r in rows]  # noqa: E731
    metrics = summarize(g("abnormal"), g("malignant"), g("suspicion"), g("p_malignant"),
                        g("woman"), g("tissue"), n_boot=n_boot)
    single = summarize(g("abnormal"), g("malignant"), g("p_abnormal"), g("p_malignant"),
                       g("woman"), None, n_boot=n_boot)
    metrics["single_image"] = {key: single[key] for key in ("auc_abnormal", "sens_at_90spec", "spec_at_85sens")}
    metrics["contralateral_beta"] = beta
    metrics["auc_abnormal_by_beta"] = {
        str(b): roc_auc(g("abnormal"), [r["suspicion"] for r in add_contralateral(rows, b)]) for b in (0.0, 0.5, 1.0)
    }
    hits = [r["peak_in_lesion"] for r in rows if r["peak_in_lesion"] is not None]
    metrics["pointing_game"] = {"hits": int(sum(hits)), "n_lesion_images": len(hits),
                                "rate": float(np.mean(hits)) if hits else float("nan")}
    metrics["k"] = k
    save_json(out / "cv_metrics.json", metrics)
    save_json(out / "cv_predictions.json", rows)
    return metrics


def woman_scores(rows: list[dict]) -> tuple[list[str], list[int], list[float]]:
    """One score per woman, as the box decides: her most suspicious image.

    The box's study score is the maximum over breasts of each breast's most
    suspicious view (``edge_agent.inference.triage.aggregate``); mini-MIAS has
    one view (MLO) per breast, so it is the maximum of her images'
    ``suspicion``. A woman is abnormal if any of her images is.
    """
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["woman"], []).append(r)
    women = sorted(by)
    return (women, [int(any(r["abnormal"] for r in by[w])) for w in women],
            [max(r["suspicion"] for r in by[w]) for w in women])


def compare_rows(rows: list[dict], beta: float = CONTRALATERAL_BETA, n_boot: int = 2000) -> dict:
    """Image-level (this breast alone, and suspicion) and woman-level AUC with 95% CIs by woman."""
    from models.evaluation import bootstrap_ci

    rows = add_contralateral(rows, beta)

    def auc(y, s, groups):
        lo, hi = bootstrap_ci(roc_auc, y, s, groups, n_boot=n_boot)
        return {"value": roc_auc(y, s), "ci95": [lo, hi]}

    y = [r["abnormal"] for r in rows]
    g = [r["woman"] for r in rows]
    women, wy, ws = woman_scores(rows)
    return {"n_images": len(rows), "n_women": len(women),
            "image_auc_single": auc(y, [r["p_abnormal"] for r in rows], g),
            "image_auc_suspicion": auc(y, [r["suspicion"] for r in rows], g),
            "woman_auc": auc(wy, ws, women)}


def paired_difference(rows_a: list[dict], rows_b: list[dict], beta: float = CONTRALATERAL_BETA,
                      n_boot: int = 2000, seed: int = 0) -> dict:
    """AUC of B minus AUC of A on the same images, with a 95% CI from resampling women (paired)."""
    a = {r["ref"]: r for r in add_contralateral(rows_a, beta)}
    b = {r["ref"]: r for r in add_contralateral(rows_b, beta)}
    refs = sorted(set(a) & set(b))
    wa, wya, wsa = woman_scores([a[r] for r in refs])
    wb, _, wsb = woman_scores([b[r] for r in refs])
    assert wa == wb
    y = np.array([a[r]["abnormal"] for r in refs])
    g = np.array([a[r]["woman"] for r in refs])
    s = {k: (np.array([a[r][k] for r in refs]), np.array([b[r][k] for r in refs])) for k in ("p_abnormal", "suspicion")}
    uniq = sorted(set(g.tolist()))
    members = {w: np.nonzero(g == w)[0] for w in uniq}
    wy, wsa, wsb = np.array(wya), np.array(wsa), np.array(wsb)

    def diffs(img_idx, w_idx):
        out = {f"image_{k}": roc_auc(y[img_idx], sb[img_idx]) - roc_auc(y[img_idx], sa[img_idx]) for k, (sa, sb) in s.items()}
        out["woman"] = roc_auc(wy[w_idx], wsb[w_idx]) - roc_auc(wy[w_idx], wsa[w_idx])
        return out

    point = diffs(np.arange(len(refs)), np.arange(len(uniq)))
    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), len(uniq))
        d = diffs(np.concatenate([members[uniq[i]] for i in pick]), pick)
        for k, v in d.items():
            if v == v:
                boots[k].append(v)
    return {k: {"value": point[k], "ci95": [float(np.quantile(boots[k], 0.025)), float(np.quantile(boots[k], 0.975))]}
            for k in point}


def _cv_rows(out: Path, folds) -> list[dict]:
    rows: list[dict] = []
    for f in folds:
        path = out / f"fold{f}.json"
        if path.exists():
            rows += json.loads(path.read_text())["rows"]
    return rows


def compare_main(paths: list[str]) -> int:
    """``python -m models.crossval compare DIR...``: one JSON line per CV folder, release folder or predictions file.

    Each folder's ``cv_predictions.json`` (or its ``fold*.json``) gives
    image-level and woman-level AUCs with 95% CIs (2000 resamples of women);
    then each later folder's paired AUC difference against the first.
    """
    sets = []
    for p in map(Path, paths):
        pred = p if p.is_file() else p / "cv_predictions.json"
        rows = json.loads(pred.read_text()) if pred.exists() else _cv_rows(p, range(5))
        cfg = json.loads((p / "fold0.json").read_text())["config"] if (p / "fold0.json").exists() else None
        sets.append(rows)
        print(json.dumps({"folder": str(p), "seed": cfg["seed"] if cfg else None, **compare_rows(rows)}))
    for p, rows in zip(paths[1:], sets[1:], strict=True):
        print(json.dumps({"paired_difference": f"{p} minus {paths[0]}", **paired_difference(sets[0], rows)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) a woman-level CV in the background, with a progress log.

        python -m models.crossval --out runs/cv-lite-s0 --arch lite0 --size 256 \
            --crop 160 --epochs 30 --lr 1e-3 --synthetic-pretrain 200 --pretrain-epochs 5 --seed 0

    Each fold is skipped when its ``fold<k>.json`` exists and resumed from its
    checkpoint otherwise; the synthetic pretraining is saved once
    (``pretrain.pt``). ``progress.log`` gets a line per epoch.
    """
    import argparse
    import time

    from models.data import read_folder, shared_data_dir
    from models.training import build_arrays, pretrain_state

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m models.crossval")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=shared_data_dir() / "mias")
    ap.add_argument("--arch", default="mobile")
    ap.add_argument("--size", type=int, default=TrainConfig.input_size)
    ap.add_argument("--crop", type=int, default=TrainConfig.crop)
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--pos-weight", type=float, default=TrainConfig.pos_weight)
    ap.add_argument("--synthetic-pretrain", type=int, default=0)
    ap.add_argument("--pretrain-epochs", type=int, default=TrainConfig.pretrain_epochs)
    ap.add_argument("--pair", action="store_true")
    ap.add_argument("--freeze-blocks", type=int, default=0, help="lite0: keep stem + N blocks at ImageNet weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--folds", default=None, help="comma-separated folds (default all)")
    ap.add_argument("--final", action="store_true", help="train on every woman instead (writes final.pt)")
    a = ap.parse_args(argv)
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, crop=a.crop, pos_weight=a.pos_weight,
                      seed=a.seed, threads=1, pair=a.pair, synthetic_pretrain=a.synthetic_pretrain,
                      pretrain_epochs=a.pretrain_epochs, arch=a.arch, input_size=a.size,
                      freeze_blocks=a.freeze_blocks)
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    logf = (out / "progress.log").open("a", buffering=1)
    t0 = time.time()

    def say(msg: str) -> None:
        logf.write(f"{time.strftime('%H:%M:%S')} +{time.time() - t0:6.0f}s {msg}\n")

    torch.set_num_threads(1)
    records = read_folder(a.data)
    arrays = build_arrays(records, cfg.input_size)
    say(f"start {asdict(cfg)}")
    init = None
    if cfg.synthetic_pretrain:
        pre = out / "pretrain.pt"
        if pre.exists():
            init = torch.load(pre, weights_only=True)
        else:
            init = pretrain_state(cfg, progress=False)
            torch.save(init, pre)
        say("pretrain done")
    if a.final:
        from models.training import train

        model = train(arrays, np.arange(len(records)), cfg, checkpoint=out / "final.ckpt", progress=False,
                      init_state=init, log=lambda e, loss: say(f"final epoch {e} loss {loss:.4f}"))
        torch.save(model.state_dict(), out / "final.pt")
        say("final done")
        return 0
    folds = range(a.k) if a.folds is None else [int(f) for f in a.folds.split(",")]
    for f in folds:
        if (out / f"fold{f}.json").exists():
            continue
        run_fold(records, arrays, f, a.k, cfg, out, progress=False, init_state=init,
                 log=lambda e, loss, f=f: say(f"fold {f} epoch {e} loss {loss:.4f}"))
        rows = _cv_rows(out, [f])
        say(f"fold {f} done: {json.dumps(compare_rows(rows, n_boot=200))}")
    done = [f for f in range(a.k) if (out / f"fold{f}.json").exists()]
    if len(done) == a.k:
        collect(out, a.k)
        save_json(out / "compare.json", compare_rows(_cv_rows(out, done)))
    say(f"folds done {done}: {json.dumps(compare_rows(_cv_rows(out, done), n_boot=200))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
