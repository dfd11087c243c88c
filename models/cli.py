"""``mammo train``, ``mammo eval`` (``--images`` or ``--dicom``) and ``mammo bench infer``.

``edge_agent.cli`` calls :func:`register` with its top-level subparsers and the
subparsers of ``mammo bench``. Each handler takes the parsed args and returns
an exit code (0 ok, 1 runtime error, 2 usage error); with ``--json`` the LAST
line of stdout is exactly one JSON object. ``python -m models.cli ...`` runs
the same commands without the project CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.errors import DatasetError, ModelError

__all__ = ["register", "cmd_train", "cmd_eval", "cmd_bench_infer", "main"]


def _default_data() -> Path:
    from models.data import shared_data_dir

    return shared_data_dir() / "mias"


def _default_release() -> Path:
    from models.release_files import default_release_dir

    return default_release_dir()


def _emit(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, sort_keys=True))
    else:
        for key, val in obj.items():
            print(f"{key}: {val}")


def cmd_train(args: argparse.Namespace) -> int:
    """Cross-validate the recipe (``--cv``) or train the release model on every woman."""
    import numpy as np

    from models.crossval import collect, run_fold
    from models.data import read_folder
    from models.training import TrainConfig, build_arrays, pretrain_state, train

    try:
        records = read_folder(args.data)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen = {"epochs": args.epochs, "lr": args.lr, "pair": args.pair, "synthetic_pretrain": args.synthetic_pretrain}
    cfg = TrainConfig(seed=args.seed, threads=args.threads, **{k: v for k, v in chosen.items() if v is not None})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = build_arrays(records)
    progress = not args.no_progress
    init = pretrain_state(cfg, progress=progress)  # same for every fold: computed once
    try:
        if args.cv:
            folds = range(args.k) if args.folds is None else [int(f) for f in args.folds.split(",")]
            for f in folds:
                run_fold(records, arrays, f, args.k, cfg, out, progress=progress, init_state=init)
            done = [f for f in range(args.k) if (out / f"fold{f}.json").exists()]
            result: dict = {"folds_done": done, "out": str(out)}
            if len(done) == args.k:
                m = collect(out, args.k)
                result["auc_abnormal"] = m["auc_abnormal"]
                result["auc_malignant"] = m["auc_malignant"]
        else:
            import torch

            model = train(arrays, np.arange(len(records)), cfg, checkpoint=out / "final.ckpt",
                          progress=progress, init_state=init)
            torch.save(model.state_dict(), out / "final.pt")
            result = {"model": str(out / "final.pt"), "n_images": len(records),
                      "n_women": len({r.woman for r in records})}
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _emit(result, args.json)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the shipped model over a folder through the box's own inference path.

    ``--images``: a mini-MIAS-shaped folder, per image and per woman. ``--dicom``
    with ``--labels``: a clinic's DICOM studies through a throwaway box (ingest,
    de-identification, inference, triage), per woman-study.
    """
    from edge_agent.errors import MammoError

    release = Path(args.release or _default_release())
    try:
        if args.dicom:
            from models.dicom_eval import evaluate_dicom

            if not args.labels:
                print("error: --dicom needs --labels CSV (study_instance_uid,label; see the README)", file=sys.stderr)
                return 2
            result = evaluate_dicom(Path(args.dicom), Path(args.labels), release, backend=args.backend,
                                    threads=args.threads, n_boot=args.n_boot)
        else:
            from models.runtime import evaluate_folder

            result = evaluate_folder(Path(args.images), release, backend=args.backend, threads=args.threads,
                                     n_boot=args.n_boot)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ModelError, MammoError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _emit(result, args.json)
    return 0


def cmd_bench_infer(args: argparse.Namespace) -> int:
    """Latency of the four forms of the model on the same images, side by side."""
    from models.bench import bench_infer

    try:
        result = bench_infer(Path(args.release or _default_release()), images=args.images,
                             n_images=args.n, threads=args.threads, checkpoint=args.checkpoint)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _emit(result, args.json)
    return 0


def register(subparsers, bench_subparsers) -> None:
    """Add ``train``, ``eval`` and ``bench infer`` to the project CLI.

    Nothing heavy is imported here: every ``mammo`` command builds this parser,
    and importing torch (via ``models.training``) would cost every command ~2 s.
    Unset recipe options (None) take ``TrainConfig``'s defaults in :func:`cmd_train`.
    """
    p = subparsers.add_parser("train", help="cross-validate or train the screening model")
    p.add_argument("--data", type=Path, default=_default_data(),
                   help="folder with images/ + images.csv (+ labels.csv); default ../shared/data/mias")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="output folder (checkpoints, metrics)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, order and augmentation")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's (models.training.TrainConfig)")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    p.add_argument("--pair", action=argparse.BooleanOptionalAction, default=None,
                   help="also feed the same woman's other breast (contralateral comparison)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--synthetic-pretrain", type=int, default=None,
                   help="pretrain on this many synthetic mammograms first (0 = off)")
    p.add_argument("--cv", action="store_true", help="woman-level k-fold CV instead of the final model")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--folds", default=None, help="comma-separated folds to run (others can run elsewhere)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_train)

    e = subparsers.add_parser("eval", help="evaluate a model release per image and per woman (image folder or DICOM studies)")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder with images/ and images.csv (mini-MIAS shape)")
    src.add_argument("--dicom", help="folder of DICOM files (4-view studies), run through a temporary box")
    e.add_argument("--labels", help="with --dicom: CSV with study_instance_uid (or accession_number, patient_id) and label 0/1")
    e.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (of women) for the 95%% CIs")
    e.add_argument("--release", default=None, help="release folder (default: newest under models/release)")
    e.add_argument("--backend", choices=["onnx-int8", "tflite-int8", "onnx-fp32"], default="onnx-int8")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--json", action="store_true")
    e.set_defaults(handler=cmd_eval)

    b = bench_subparsers.add_parser("infer", help="latency of PyTorch / ONNX / INT8 ONNX / TFLite")
    b.add_argument("--release", default=None)
    b.add_argument("--images", default=None, help="folder of images (default: real ones if present, else synthetic)")
    b.add_argument("--checkpoint", default=None, help="PyTorch weights (default: the release's model.pt)")
    b.add_argument("-n", type=int, default=30, help="images to time")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--json", action="store_true")
    b.set_defaults(handler=cmd_bench_infer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    register(sub, bench_sub)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
