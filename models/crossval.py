"""Woman-level k-fold cross-validation of the training recipe.

The CV estimates the PROCEDURE (preprocess + recipe), and the released model is
the same procedure run on every woman. Each fold writes its out-of-fold
predictions to ``<out>/fold<k>.json`` so folds can run in separate processes
(two cores: two folds at a time) and a crashed run only redoes its fold;
:func:`collect` merges them into the metrics the model card quotes.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from models.data import Record, woman_folds
from models.evaluation import pointing_hit, roc_auc, summarize
from models.release_files import CONTRALATERAL_BETA, suspicion
from models.training import Arrays, TrainConfig, predict, save_json, train

__all__ = ["run_fold", "collect", "peak_hits", "add_contralateral"]


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
             progress: bool = True, split_seed: int = 0, init_state: dict | None = None) -> Path:
    """Train on the other folds, predict this one, write ``fold<k>.json``."""
    folds = np.asarray(woman_folds(records, k=k, seed=split_seed))
    tr, te = np.nonzero(folds != fold)[0], np.nonzero(folds == fold)[0]
    assert not set(records[i].woman for i in tr) & set(records[i].woman for i in te)
    out.mkdir(parents=True, exist_ok=True)
    model = train(arrays, tr, cfg, checkpoint=out / f"fold{fold}.ckpt", progress=progress,
                  init_state=init_state)
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
