"""``mammo hw detect``: what this machine offers and which profile it gets, with reasons."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from edge_agent.cliout import EXIT_OK, add_json_flag, emit
from hardware_profiles.detect import detect
from hardware_profiles.profiles import load_profiles
from hardware_profiles.select import choose


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hw = sub.add_parser("hw", help="hardware profiles: detect and benchmark")
    hw_sub = hw.add_subparsers(dest="hw_command", metavar="ACTION", required=True)
    p = hw_sub.add_parser("detect", help="list what this machine offers and the profile it picks, and why")
    p.add_argument("--profile", default=None, help="force a profile (falls back to cpu-small if unmet)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_detect)
    p = hw_sub.add_parser("bench", help="the same images through every profile this machine can load: latency and agreement")
    p.add_argument("--images", type=int, default=12)
    add_json_flag(p)
    p.set_defaults(handler=cmd_bench)


def detect_report(forced: str | None = None) -> dict[str, Any]:
    profiles = load_profiles()
    facts = detect(tuple(n for p in profiles.values() for n in p.delegates))
    choice = choose(profiles, facts, forced)
    return {
        "machine": dataclasses.asdict(facts),
        "profiles": sorted(profiles),
        "chosen": choice.profile.name,
        "chosen_profile": dataclasses.asdict(choice.profile),
        "reasons": [{"profile": n, "why": w} for n, w in choice.reasons],
    }


def cmd_detect(args: argparse.Namespace) -> int:
    report = detect_report(args.profile)
    m = report["machine"]
    lines = [
        f"machine: {m['arch']}, {m['cores']} cores, {m['memory_gb']} GB RAM, GPU: {m['gpu_name'] or ('yes' if m['gpu_visible'] else 'none')}",
        f"ONNX Runtime providers: {', '.join(m['ort_providers']) or 'none'}",
        f"TFLite delegates found: {', '.join(n for n, _ in m['delegates']) or 'none'}",
        f"chosen profile: {report['chosen']}",
        *(f"  {r['profile']:24s} {r['why']}" for r in report["reasons"]),
    ]
    emit(args, report, "\n".join(lines))
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from hardware_profiles.bench import hw_bench

    result = hw_bench(n_images=args.images)
    text = "\n".join(
        f"{name:24s} {r['status']:10s} median {r.get('median_ms', '-')} ms  max prob diff vs reference {r.get('max_prob_diff_vs_reference', '-')}"
        + (f"  ({r['reason']})" if r.get("reason") else "")
        for name, r in result["profiles"].items()
    )
    emit(args, result, text)
    return EXIT_OK
