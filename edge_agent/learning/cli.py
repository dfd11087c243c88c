"""``mammo train status|run`` and ``mammo bench train``.

``mammo train`` already exists (``models.cli``: cross-validation and the
release model's training, options only); the box's local training adds two
optional subcommands to that same parser, so ``mammo train --cv`` keeps
working. Nothing heavy is imported at parse time (torch, opacus: inside the
handlers).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from edge_agent.cliout import EXIT_FAILED, EXIT_OK, add_json_flag, emit


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.choices.get("train") or sub.add_parser("train", help="local training on this box (status, run)")
    local = train.add_subparsers(dest="train_command", metavar="{status,run}", required=False,
                                 title="local training on this box (differential privacy)")
    s = local.add_parser("status", help="privacy budget spent and left, rounds, the last decision and its reasons")
    add_json_flag(s)
    s.set_defaults(handler=cmd_status)
    r = local.add_parser("run", help="run (or resume) one local training round now, if the policy allows (a demo or a technician)")
    r.add_argument("--force-window", action="store_true", help="ignore the training window (every other condition still applies)")
    r.add_argument("--no-wait", action="store_true", help="end with the round paused if a study arrives, instead of waiting for screening")
    add_json_flag(r)
    r.set_defaults(handler=cmd_run)
    b = bench_sub.add_parser("train", help="local DP round vs the same round without DP; screening p95 while a round runs vs idle")
    b.add_argument("--studies", type=int, default=32, help="synthetic confirmed studies to train on")
    b.add_argument("--steps", type=int, default=40, help="steps per round (both rounds)")
    b.add_argument("--screening", type=int, default=5, help="real-size studies screened idle and again while a round runs")
    b.add_argument("--size", default="3328x4096", help="real-size study image WIDTHxHEIGHT")
    add_json_flag(b)
    b.set_defaults(handler=cmd_bench_train)


def _status(settings: Any) -> dict[str, Any]:
    from edge_agent.inference.activation import ModelRegistry
    from edge_agent.learning import ledger
    from edge_agent.store import open_database

    db = open_database(settings.db_path, max_size_mb=settings.db_max_size_mb)
    try:
        act = ModelRegistry(db, settings).active()
        version = act.generation if act else None
        out = ledger.status(db, version)
        if out.get("epsilon_budget") is None and version is not None:  # no round yet: the budget the settings give
            out.update(epsilon_budget=settings.train_epsilon_budget, delta=settings.train_delta, epsilon_left=settings.train_epsilon_budget)
        out.update(window=settings.train_window, enabled=settings.train_enabled, update_sink=settings.train_update_sink)
        return out
    finally:
        db.conn.close()


def cmd_status(args: argparse.Namespace) -> int:
    out = _status(args.settings)
    last = out.get("last_decision") or {}
    lines = [f"Model {out['base_model_version']}: privacy budget epsilon {out.get('epsilon_budget')} at delta {out.get('delta')}; "
             f"spent {out['epsilon_spent']:.3f}, left {out.get('epsilon_left') if out.get('epsilon_left') is None else round(out['epsilon_left'], 3)}",
             f"Rounds: {len(out.get('rounds', []))} ({out.get('rounds_done', 0)} done, open: {out.get('open_round') or 'none'})",
             f"Last decision: {'train' if last.get('train') else 'wait'} - {'; '.join(last.get('reasons', [])) or 'none yet'}"]
    emit(args, out, "\n".join(lines))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.learning import runner

    out = runner.run(args.settings, force_window=args.force_window, wait_when_paused=not args.no_wait)
    emit(args, out.as_dict(), f"{out.status}: {'; '.join(out.reasons)}")
    return EXIT_FAILED if out.status == "failed" else EXIT_OK


def cmd_bench_train(args: argparse.Namespace) -> int:
    from edge_agent.learning.bench import train_bench

    w, h = (int(x) for x in args.size.lower().split("x"))
    out = train_bench(n_studies=args.studies, steps=args.steps, n_screening=args.screening, width=w, height=h)
    text = json.dumps(out, indent=2)
    emit(args, out, text)
    return EXIT_OK
