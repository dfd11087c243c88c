"""Build ``models/release/<version>/`` from a trained model and its CV run.

    python -m models.release_build --final runs/final/final.pt --cv runs/cv \
        --version 0.1.0

Steps: export fp32 ONNX; static INT8 ONNX calibrated on real preprocessed
mammograms; INT8 TFLite through ``scripts/build_tflite.sh`` (separate venv);
re-score every CV fold's held-out women with that fold's model as fp32 AND as
INT8 ONNX (the honest check that quantization costs < 0.01 AUC); choose the
triage thresholds on the out-of-fold predictions, per WOMAN, with the box's own
study aggregation (:mod:`models.operating_points`); write model.json,
MODEL_CARD.md (from the measured numbers) and manifest.json; copy the CV
metrics and out-of-fold predictions beside them for audit.

``scripts/build_tflite.sh`` needs ``.venv-litert`` (see that script).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from models.crossval import add_contralateral
from models.data import read_folder, shared_data_dir, woman_folds
from models.evaluation import roc_auc
from models.operating_points import derive, describe_data
from models.release_files import CONTRALATERAL_BETA, write_manifest
from models.training import build_arrays, pair_indices

__all__ = ["build"]

REPO = Path(__file__).resolve().parents[1]


def _ort_probs(path: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    out = [sess.run(None, {"image": x[None]})[0][0] for x in inputs]
    return 1 / (1 + np.exp(-np.asarray(out, np.float64)))


def _repeat_summary(cv_dir: Path) -> dict:
    """Headline figures of the same CV rerun with another training seed."""
    m = json.loads((cv_dir / "cv_metrics.json").read_text())
    seed = json.loads((cv_dir / "fold0.json").read_text())["config"]["seed"]
    keys = ("auc_abnormal", "auc_malignant", "sens_at_90spec", "spec_at_85sens")
    return {"seed": seed, **{k: m[k] for k in keys}, "auc_abnormal_single_image": m["single_image"]["auc_abnormal"],
            "pointing_game": m["pointing_game"]}


def _per_class_auc(cv_rows: list[dict], data: Path) -> dict:
    """AUC of each finding class against all normal images (suspicion score)."""
    import csv

    with (data / "images.csv").open(newline="") as f:
        classes = {r["ref"]: r.get("classes", "") for r in csv.DictReader(f)}
    normal = [r["suspicion"] for r in cv_rows if not r["abnormal"]]
    out = {}
    for c in sorted({c for v in classes.values() for c in v.split(";")} - {"NORM", ""}):
        pos = [r["suspicion"] for r in cv_rows if r["abnormal"] and c in classes.get(r["ref"], "").split(";")]
        if pos:
            out[c] = {"n": len(pos), "auc_vs_normal": roc_auc([1] * len(pos) + [0] * len(normal), pos + normal)}
    return out


def _calibration(arrays, pair: bool, idx: np.ndarray | None = None, n: int = 96, seed: int = 0) -> np.ndarray:
    """(n, C, S, S) real preprocessed inputs, drawn from ``idx`` (default all)."""
    idx = np.arange(len(arrays.images)) if idx is None else idx
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return arrays.inputs(pick, pair).astype(np.float32)


def build(final: Path, cv: Path, version: str, data: Path, out_root: Path, k: int = 5,
          notes: Path | None = None, repeats: list[Path] | None = None) -> Path:
    import torch

    from models.export.onnx_export import export_onnx
    from models.export.quantize import quantize_int8
    from models.network import model_from_state_dict

    torch.set_num_threads(1)
    records = read_folder(data)
    cfg = json.loads((cv / "fold0.json").read_text())["config"]
    size = int(cfg.get("input_size", 128))  # 0.1.0's configs predate the field: 128 px
    arrays = build_arrays(records, size)
    pair = bool(cfg.get("pair", False))
    calib = _calibration(arrays, pair)
    out = out_root / version
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    # --- fold models: fp32 vs INT8 ONNX on their own held-out women ---
    folds = np.asarray(woman_folds(records, k=k))
    oof = {"fp32": np.zeros((len(records), 2)), "int8": np.zeros((len(records), 2))}
    with tempfile.TemporaryDirectory() as tmp:
        for f in range(k):
            te = np.nonzero(folds == f)[0]
            m = model_from_state_dict(torch.load(cv / f"fold{f}.pt"))
            fp, q = Path(tmp) / f"f{f}.onnx", Path(tmp) / f"f{f}_int8.onnx"
            export_onnx(m, fp, size)
            # calibrate each fold's INT8 model on its TRAINING women only
            tr = np.nonzero(folds != f)[0]
            quantize_int8(fp, q, _calibration(arrays, pair, tr))
            oof["fp32"][te] = _ort_probs(fp, arrays.inputs(te, pair))
            oof["int8"][te] = _ort_probs(q, arrays.inputs(te, pair))
    ab = np.array([r.abnormal for r in records])
    ml = np.array([r.malignant for r in records])
    sel = ab == 1
    pidx = np.array(pair_indices([r.woman for r in records]))
    susp = {k: v[:, 0] - CONTRALATERAL_BETA * v[pidx, 0] for k, v in oof.items()}
    quant_check = {
        "auc_abnormal_fp32": roc_auc(ab, oof["fp32"][:, 0]),
        "auc_abnormal_int8": roc_auc(ab, oof["int8"][:, 0]),
        "auc_suspicion_fp32": roc_auc(ab, susp["fp32"]),
        "auc_suspicion_int8": roc_auc(ab, susp["int8"]),
        "auc_malignant_fp32": roc_auc(ml[sel], oof["fp32"][sel, 1]),
        "auc_malignant_int8": roc_auc(ml[sel], oof["int8"][sel, 1]),
        "max_abs_prob_diff": float(np.abs(oof["fp32"] - oof["int8"]).max()),
        "note": "each CV fold's model exported and quantized, scored on its held-out women",
    }

    # --- the release model (trained on all women) ---
    model = model_from_state_dict(torch.load(final))
    torch.save(model.state_dict(), out / "model_fp32.pt")
    export_onnx(model, out / "model_fp32.onnx", size)
    quantize_int8(out / "model_fp32.onnx", out / "model_int8.onnx", calib)
    with tempfile.TemporaryDirectory() as tmp:
        cpath = Path(tmp) / "calib.npy"
        np.save(cpath, calib)
        subprocess.run([str(REPO / "scripts" / "build_tflite.sh"), str(out / "model_fp32.pt"), str(cpath),
                        str(out / "model_int8.tflite")], check=True)

    cv_metrics = json.loads((cv / "cv_metrics.json").read_text())
    cv_rows = add_contralateral(json.loads((cv / "cv_predictions.json").read_text()), CONTRALATERAL_BETA)
    points = {
        "beta": CONTRALATERAL_BETA,
        "fallback_p_other": float(np.median([r["p_abnormal"] for r in cv_rows])),
        "score": "suspicion = p_abnormal - beta * p_abnormal(other breast, same view); fallback_p_other when absent",
    }  # review/priority: chosen per woman below
    per_class = _per_class_auc(cv_rows, data)
    info = {
        "version": version,
        "input_size": int(arrays.images.shape[-1]),
        "input": {"name": "image", "shape": [1, model.in_ch, arrays.images.shape[-1], arrays.images.shape[-1]],
                  "channels": ["this breast"] + (["the same woman's other breast (same view)"] if pair else []),
                  "preprocessing": "models.preprocess.preprocess (mask, canonical side, crop, window 1-99%)"},
        "outputs": {"score": "(1, 2) logits [abnormal, malignant]",
                    "lesion_map": "(1, 2, S/8, S/8) logits; TFLite gives NHWC (1, S/8, S/8, 2)"},
        "operating_points": points,
        "operating_points_note": ("thresholds on the study score chosen per woman on woman-level k-fold "
                                  "out-of-fold predictions (models.operating_points); the release model is "
                                  "retrained on all women, so its calibration can drift from these folds"),
        "training_config": cfg,
        "cv_metrics": cv_metrics,
        "quantization_check": quant_check,
        "per_class_auc": per_class,
        "intended_use": "triage aid for radiologist review; never a diagnosis",
        "development_notes": notes.read_text().splitlines() if notes else [],
        "cv_repeats": [_repeat_summary(r) for r in repeats or []],
    }
    if cfg.get("arch") == "lite0":  # ImageNet weights (Apache-2.0): licence and NOTICE travel with the release
        from models.lite import WEIGHTS_LICENCE, write_weights_notice

        info["weights_licence"] = WEIGHTS_LICENCE
        write_weights_notice(out)
    n_women = len({r["woman"] for r in cv_rows})
    info.update(derive(cv_rows, info, describe_data(info, n_women)))  # the same selection for every release
    (out / "model.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    # the out-of-fold predictions behind every CV figure, for audit (no pixels)
    shutil.copy(cv / "cv_metrics.json", out / "cv_metrics.json")
    shutil.copy(cv / "cv_predictions.json", out / "cv_predictions.json")
    from models.model_card import render_card

    (out / "MODEL_CARD.md").write_text(render_card(info, out))
    write_manifest(out, version)
    # the box refuses a release without its self-test (edge_agent/inference/activation.py)
    from models.selftest import build_selftest

    build_selftest(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.release_build")
    ap.add_argument("--final", type=Path, required=True, help="weights from `mammo train` (final.pt)")
    ap.add_argument("--cv", type=Path, required=True, help="folder of `mammo train --cv`")
    ap.add_argument("--version", required=True)
    ap.add_argument("--data", type=Path, default=shared_data_dir() / "mias")
    ap.add_argument("--out-root", type=Path, default=REPO / "models" / "release")
    ap.add_argument("--notes", type=Path, default=None, help="markdown lines: how the recipe was chosen")
    ap.add_argument("--repeat", type=Path, action="append", default=[],
                    help="folder of the same CV run with another --seed (repeatable)")
    a = ap.parse_args(argv)
    path = build(a.final, a.cv, a.version, a.data, a.out_root, notes=a.notes, repeats=a.repeat)
    print(json.dumps({"release": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
