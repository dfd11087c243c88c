"""Core ``mammo`` subcommands: up, status, settings, queue and bench queue."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import threading
from typing import Any

from edge_agent import audit, daemon
from edge_agent.audit_cli import cli_actor
from edge_agent.box import Box, open_box
from edge_agent.cli import EXIT_FAILED, EXIT_OK, add_json_flag, emit
from edge_agent.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="start the appliance (receiver, workers, kiosk) with the settings' defaults")
    p.add_argument("--check", action="store_true", help="open everything, print the status and exit (no serving)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_up)

    p = sub.add_parser("status", help="box identity, storage and queue state")
    add_json_flag(p)
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("settings", help="every setting with its value and documentation")
    add_json_flag(p)
    p.set_defaults(handler=cmd_settings)

    q = sub.add_parser("queue", help="inspect and repair the job queues")
    qsub = q.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    p = qsub.add_parser("stats", help="per-queue counts")
    add_json_flag(p)
    p.set_defaults(handler=cmd_queue_stats)
    p = qsub.add_parser("dead", help="list dead-lettered jobs with their last error")
    p.add_argument("--queue", default=None)
    add_json_flag(p)
    p.set_defaults(handler=cmd_queue_dead)
    p = qsub.add_parser("requeue", help="put dead-lettered jobs back in line")
    p.add_argument("queue")
    p.add_argument("ids", nargs="*", type=int, help="job ids (default: all dead jobs of the queue)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_queue_requeue)

    p = bench_sub.add_parser("queue", help="our queue vs persist-queue and huey; --soak for SIGKILL cycles")
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--soak", action="store_true", help="run SIGKILL cycles and count lost/duplicated jobs")
    p.add_argument("--cycles", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3, help="rounds; in each, the stores take turns in slices; the headline ratio is the median of the per-round ratios")
    add_json_flag(p)
    p.set_defaults(handler=cmd_bench_queue)


def _status(box: Box) -> dict[str, Any]:
    s: Settings = box.settings
    disk = shutil.disk_usage(s.home)
    return {
        "box_id": box.keystore.box_id,
        "box_name": s.box_name,
        "home": str(s.home),
        "database": str(s.db_path),
        "keystore": str(s.keystore_path),
        "free_disk_gb": round(disk.free / 1e9, 2),
        "queues": {k: dataclasses.asdict(v) for k, v in box.queue.stats().items()},
        "services": daemon.available_services(),
        "kiosk_url": f"http://{s.kiosk_host}:{s.kiosk_port}/",
    }


def cmd_up(args: argparse.Namespace) -> int:
    box = open_box(args.settings)
    audit.record_config(box.db, box.settings.public_dict(), cli_actor(), signer=box.keystore, checkpoint_every=box.settings.audit_checkpoint_every)
    status = _status(box)
    lines = [
        f"MammoAI-TR Edge box '{status['box_name']}' ({status['box_id']}) is up.",
        f"  data directory : {status['home']}",
        f"  database       : {status['database']}",
        f"  services       : {', '.join(status['services']) or 'none yet'}",
        f"  kiosk          : {status['kiosk_url']}",
        "Stop with Ctrl-C (SIGTERM also stops it cleanly).",
    ]
    if args.check:
        emit(args, status, "\n".join(lines))
        box.close()
        return EXIT_OK
    print("\n".join(lines), flush=True)
    daemon.log_to_file(box.settings.log_dir)
    statuses = daemon.run(box, threading.Event())
    box.close()
    failed = [s for s in statuses if not s.running]
    return EXIT_FAILED if failed else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    box = open_box(args.settings)
    status = _status(box)
    emit(args, status)
    box.close()
    return EXIT_OK


def cmd_settings(args: argparse.Namespace) -> int:
    values = args.settings.public_dict()
    docs = {f.name: f.metadata["help"] for f in dataclasses.fields(Settings)}
    text = "\n".join(f"{k} = {values[k]!r}\n    {docs[k]}" for k in values)
    emit(args, {"settings": values, "help": docs}, text)
    return EXIT_OK


def cmd_queue_stats(args: argparse.Namespace) -> int:
    box = open_box(args.settings)
    stats = {k: dataclasses.asdict(v) for k, v in box.queue.stats().items()}
    text = "\n".join(f"{k:10s} ready={v['ready']} leased={v['leased']} done={v['done']} dead={v['dead']}" for k, v in stats.items()) or "no jobs yet"
    emit(args, {"queues": stats}, text)
    box.close()
    return EXIT_OK


def cmd_queue_dead(args: argparse.Namespace) -> int:
    box = open_box(args.settings)
    dead = [dataclasses.asdict(d) for d in box.queue.dead_letters(args.queue)]
    text = "\n".join(f"#{d['id']} {d['queue']} attempts={d['attempts']}: {d['last_error']}" for d in dead) or "no dead-lettered jobs"
    emit(args, {"dead": dead}, text)
    box.close()
    return EXIT_OK


def cmd_queue_requeue(args: argparse.Namespace) -> int:
    box = open_box(args.settings)
    n = box.queue.requeue_dead(args.queue, args.ids or None)
    emit(args, {"requeued": n, "queue": args.queue}, f"requeued {n} job(s) in {args.queue}")
    box.close()
    return EXIT_OK


def cmd_bench_queue(args: argparse.Namespace) -> int:
    from edge_agent.bench.queue import run_bench, run_soak, summary

    result = run_soak(args.cycles) if args.soak else run_bench(args.jobs, args.rounds)
    emit(args, result, summary(result))
    return EXIT_OK if not args.soak or (result["lost"] == 0 and result["duplicated"] == 0) else EXIT_FAILED
