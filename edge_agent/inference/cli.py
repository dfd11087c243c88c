"""``mammo model ...``, ``mammo hw bench`` and ``mammo bench study``."""

from __future__ import annotations

import argparse
import dataclasses
import getpass

from edge_agent.box import open_box
from edge_agent.cli import EXIT_FAILED, EXIT_OK, add_json_flag, emit


def register(sub: argparse._SubParsersAction, bench_sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("model", help="model releases: list, activate, roll back")
    msub = m.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    p = msub.add_parser("list", help="shipped and installed releases, and the activation history")
    add_json_flag(p)
    p.set_defaults(handler=cmd_list)
    p = msub.add_parser("activate", help="verify, self-test and activate a release (by version or folder)")
    p.add_argument("release")
    p.add_argument("--reason", default="activated by technician")
    add_json_flag(p)
    p.set_defaults(handler=cmd_activate)
    p = msub.add_parser("rollback", help="re-activate the previously active release")
    add_json_flag(p)
    p.set_defaults(handler=cmd_rollback)

    p = bench_sub.add_parser("study", help="end-to-end 4-view study time (DICOM over the network to stored triage), INT8 vs PyTorch fp32")
    p.add_argument("--studies", type=int, default=100, help="studies pushed back to back for the sustained rate")
    p.add_argument("--latency-studies", type=int, default=20, help="studies pushed one at a time for p50/p95")
    p.add_argument("--size", type=int, default=1024, help="image side in pixels of the generated mammograms")
    add_json_flag(p)
    p.set_defaults(handler=cmd_bench_study)


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "technician"


def _registry(box):
    from edge_agent.inference.activation import ModelRegistry

    return ModelRegistry(box.db, box.settings)


def cmd_list(args: argparse.Namespace) -> int:
    box = open_box(args.settings)
    reg = _registry(box)
    releases = [dataclasses.asdict(r) | {"path": str(r.path)} for r in reg.releases()]
    history = [dataclasses.asdict(a) | {"path": str(a.path)} for a in reg.history()]
    text = "\n".join(f"{'*' if r['active'] else ' '} {r['version']:10s} {r['source']:9s} {r['path']}" for r in releases) or "no releases"
    emit(args, {"releases": releases, "history": history}, text)
    box.close()
    return EXIT_OK


def cmd_activate(args: argparse.Namespace) -> int:
    box = open_box(args.settings)
    act = _registry(box).activate(args.release, by=_who(), reason=args.reason)
    emit(args, dataclasses.asdict(act) | {"path": str(act.path)}, f"activated {act.version} (self-test: {act.selftest})")
    box.close()
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    box = open_box(args.settings)
    act = _registry(box).rollback(by=_who())
    emit(args, dataclasses.asdict(act) | {"path": str(act.path)}, f"rolled back to {act.version}")
    box.close()
    return EXIT_OK


def cmd_bench_study(args: argparse.Namespace) -> int:
    from edge_agent.inference.bench import study_bench

    result = study_bench(n_sustained=args.studies, n_latency=args.latency_studies, size=args.size)
    ours, peer = result["results"]["int8 (active profile)"], result["results"]["pytorch fp32"]
    text = (f"INT8: p50 {ours['p50_ms']} ms, p95 {ours['p95_ms']} ms, {ours['studies_per_min']} studies/min\n"
            f"PyTorch fp32: p50 {peer['p50_ms']} ms, p95 {peer['p95_ms']} ms, {peer['studies_per_min']} studies/min\n"
            f"ratio p95 int8/fp32: {result['ratio_p95_int8_to_pytorch_fp32']}")
    emit(args, result, text)
    return EXIT_OK if ours["p95_ms"] else EXIT_FAILED
