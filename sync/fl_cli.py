"""``mammo fl simulate``: the federated experiment on mini-MIAS clinics (:mod:`sync.simulate`).

A plugin that ``edge_agent.cli`` loads by name; nothing heavy is imported
until the handler runs (torch, opacus and tenseal load inside it).  With
``--json`` the last line of stdout is one JSON object (the tables, without
the per-image predictions); ``--out FILE`` keeps the whole result with them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from edge_agent.cliout import EXIT_OK, EXIT_USAGE, add_json_flag

__all__ = ["register", "cmd_simulate"]


def _default_data() -> str:
    return str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mias")


def _finite(obj: Any) -> Any:
    """NaN and infinity (an AUC without both classes, a non-private epsilon) as null: strict JSON has neither."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _fmt(block: dict[str, Any]) -> str:
    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    return f"{num(block['auc'])} ({num(block['ci95'][0])}-{num(block['ci95'][1])}), {block['n_women']} women"


def cmd_simulate(args: argparse.Namespace) -> int:
    from models.errors import DatasetError
    from sync.simulate import SimConfig, merge, simulate, tables_markdown

    if args.report:
        print(tables_markdown(json.loads(Path(args.report).read_text())), end="")
        return EXIT_OK
    if args.merge:
        try:
            result = _finite(merge([json.loads(Path(p).read_text()) for p in args.merge]))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return _output(args, result)

    cfg = SimConfig(data=args.data, folds=args.folds, seed=args.seed, rounds=args.rounds,
                    backbone_epochs=args.backbone_epochs, synthetic_pretrain=args.synthetic_pretrain,
                    pretrain_epochs=args.pretrain_epochs, plain_epochs=args.plain_epochs, dp_steps=args.dp_steps,
                    epsilon=args.epsilon, delta=args.delta, n_boot=args.n_boot, max_women=args.max_women)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    only = [int(f) for f in args.only_folds.split(",")] if args.only_folds else None
    if only is not None and (not args.out or not only or any(not 0 <= f < args.folds for f in only)):
        print(f"error: --only-folds takes fold numbers 0..{args.folds - 1} and needs --out (the partial result to --merge later)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        result = _finite(simulate(cfg, say=say, only_folds=only,
                                  pretrain_cache=Path(args.pretrain_cache) if args.pretrain_cache else None))
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if only is not None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, sort_keys=True) + "\n")
        print(json.dumps({"partial": str(args.out), "folds": result["folds"], "seconds": result["seconds"]}))
        return EXIT_OK
    return _output(args, result)


def _output(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True, default=str) + "\n")
    table = {k: v for k, v in result.items() if k != "predictions"}
    if args.json:
        print(json.dumps(table, sort_keys=True, default=str))
    else:
        for arm, blocks in result["arms"].items():
            print(f"{arm:16s} " + "; ".join(f"{c}: {_fmt(b)}" for c, b in blocks.items()))
    return EXIT_OK


def register(subparsers: Any, bench_subparsers: Any) -> None:
    fl = subparsers.add_parser("fl", help="federated learning experiments")
    fl_sub = fl.add_subparsers(dest="fl_command", metavar="FL", required=True)
    p = fl_sub.add_parser("simulate", help="local-only vs federated (HE + DP) vs centralized on mini-MIAS clinics split by density, per woman")
    p.add_argument("--data", default=_default_data(), help="mini-MIAS-shaped folder (default ../shared/data/mias)")
    p.add_argument("--folds", type=int, default=5, help="woman-level folds, dealt within each clinic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=5, help="federated rounds (each clinic's DP rounds together spend --epsilon)")
    p.add_argument("--backbone-epochs", type=int, default=40, help="epochs of each fold's stand-in release (the release recipe: 120)")
    p.add_argument("--synthetic-pretrain", type=int, default=400, help="synthetic mammograms to pretrain on (0 = none)")
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--pretrain-cache", default=None, metavar="FILE", help="keep the synthetic pretraining in this file (made once, reused by later runs)")
    p.add_argument("--plain-epochs", type=float, default=20.0, help="passes over the women in the non-private arms")
    p.add_argument("--dp-steps", type=int, default=20, help="DP-SGD steps per clinic in all (federated: split evenly over the rounds)")
    p.add_argument("--epsilon", type=float, default=1.0, help="privacy budget per woman (the box's default)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of women for the 95%% CIs")
    p.add_argument("--max-women", type=int, default=0, help="use only the first N women of each clinic (tests, smoke runs)")
    p.add_argument("--report", default=None, metavar="RESULT", help="print the markdown tables of an earlier --out file and exit (no training)")
    p.add_argument("--only-folds", default=None, metavar="F,F", help="run only these folds and write a partial result to --out (run several at once, then --merge)")
    p.add_argument("--merge", nargs="+", default=None, metavar="PARTIAL", help="join partial results covering every fold and print the tables (no training)")
    p.add_argument("--out", default=None, help="also write the whole result, with per-image predictions, to this file")
    add_json_flag(p)
    p.set_defaults(handler=cmd_simulate)
