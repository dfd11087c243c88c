"""``mammo model ...``, ``mammo hw bench`` and ``mammo bench study``."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
from typing import TYPE_CHECKING

from edge_agent.box import Box, open_box
from edge_agent.cli import EXIT_FAILED, EXIT_OK, add_json_flag, emit

if TYPE_CHECKING:
    from edge_agent.inference.activation import ModelRegistry


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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

    p = bench_sub.add_parser("study", help="end-to-end 4-view study time at real size (DICOM over the network to stored triage), INT8 vs PyTorch fp32")
    p.add_argument("--studies", type=int, default=10, help="studies pushed back to back for the sustained rate, per transfer syntax")
    p.add_argument("--latency-studies", type=int, default=20, help="studies pushed one at a time for p50/p95 and the stages, per transfer syntax")
    p.add_argument("--size", type=_size, default=(3328, 4096), metavar="WxH",
                   help="image width x height in pixels (default 3328x4096, a full-field detector; one number: square)")
    p.add_argument("--bits", type=int, default=14, choices=range(10, 17), metavar="10-16", help="bits stored (default 14)")
    p.add_argument("--syntax", type=_syntaxes, default=("native", "rle", "j2k"), metavar="LIST",
                   help="transfer syntaxes to send, comma-separated from native, rle, j2k (default: all three)")
    p.add_argument("--pixel-sets", type=int, default=2, help="distinct 4-view pixel sets (drawing and encoding them takes a while)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_bench_study)


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (e.g. 3328x4096) or one number") from None
    if len(parts) not in (1, 2) or min(parts) < 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (e.g. 3328x4096) or one number of at least 64")
    return (parts[0], parts[-1])


def _syntaxes(text: str) -> tuple[str, ...]:
    from edge_agent.inference.realsize import SYNTAXES

    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [n for n in names if n not in SYNTAXES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown transfer syntax {', '.join(unknown) or text!r}; choose from {', '.join(SYNTAXES)}")
    return names


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "technician"


def _registry(box: Box) -> ModelRegistry:
    from edge_agent.inference.activation import ModelRegistry

    return ModelRegistry(box.db, box.settings, keystore=box.keystore)


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

    width, height = args.size
    result = study_bench(n_sustained=args.studies, n_latency=args.latency_studies, width=width, height=height, bits=args.bits,
                         syntaxes=args.syntax, pixel_sets=args.pixel_sets)
    ours, peer = result["results"]["int8 (active profile)"], result["results"]["pytorch fp32"]
    lines = [f"{width}x{height}, {args.bits} bits; profile {ours['profile']} ({ours['backend']}); goal p95 < {result['goal_p95_ms']} ms per study"]
    for name in result["transfer_syntaxes"]:
        o, p = ours["by_syntax"][name], peer["by_syntax"][name]
        lines.append(f"{name:6s} {result['study_bytes_mb'][name]:6.1f} MB/study  INT8: p50 {o['p50_ms']} ms, p95 {o['p95_ms']} ms, {o['studies_per_min']} studies/min"
                     f" | PyTorch fp32: p50 {p['p50_ms']} ms, p95 {p['p95_ms']} ms | ratio p95 {result['ratio_p95_int8_to_pytorch_fp32'][name]}")
        lines.append("       stages p50 ms: " + ", ".join(f"{s} {v['p50']}" for s, v in o["stages_ms"].items())
                     + f"; views ready on arrival {o['views_prepared_while_arriving_mean']}/4")
        lines.append("       per view p50 ms: " + ", ".join(f"{s} {v['p50']}" for s, v in o["view_stages_ms"].items()))
    lines.append(f"peak RSS of the appliance (box process + its {ours['appliance_processes'] - 1} ingest worker processes, summed at the same instant,"
                 f" every {ours['sample_period_ms']} ms): INT8 {ours['peak_rss_appliance_sampled_mb']} MB, at most {ours['peak_rss_appliance_bound_mb']} MB"
                 f" (sum of each process's own peak); goal < {result['goal_peak_rss_mb']} MB")
    lines.append(f"    box process alone: INT8 {ours['peak_rss_mb']} MB ({ours['rss_when_ready_mb']} MB before the first study),"
                 f" PyTorch {peer['peak_rss_mb']} MB; ingest workers' own peaks {ours['peak_rss_worker_processes_mb']} MB;"
                 f" views decoded once (handed from ingest to inference): {ours['views_decoded_by_ingest']}")
    lines += result["notes"]
    emit(args, result, "\n".join(lines))
    return EXIT_OK if all(o["p95_ms"] for o in ours["by_syntax"].values()) else EXIT_FAILED
