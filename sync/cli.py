"""``mammo coordinator up|status``, ``mammo sync status`` and ``mammo bench sync``.

Flower, TenSEAL and torch are imported inside the handlers, so ``mammo``
parses its arguments without them.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.cliout import EXIT_OK, add_json_flag, emit
from edge_agent.errors import SyncError
from edge_agent.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    coord = sub.add_parser("coordinator", help="the federation's coordinator: Flower SuperLink, ServerApp, releases")
    cs = coord.add_subparsers(dest="coordinator_command", metavar="ACTION", required=True)
    up = cs.add_parser("up", help="run the coordinator's services until SIGTERM/Ctrl-C")
    _home_arg(up)
    up.add_argument("--authority", type=Path, required=True, help="the federation authority folder (its passphrase: MAMMO_AUTHORITY_PASSPHRASE or asked)")
    up.add_argument("--base-release", type=Path, default=None, help="release the federation starts from (first start only; default: the shipped one)")
    up.add_argument("--host", default=None, help="address to listen on (default: sync_coordinator_host)")
    up.add_argument("--port", type=int, default=None, help="TCP port (default: sync_coordinator_port)")
    up.set_defaults(handler=cmd_up)
    st = cs.add_parser("status", help="clinics and when they synced, pending updates, rounds, releases, per-clinic metrics")
    _home_arg(st)
    add_json_flag(st)
    st.set_defaults(handler=cmd_coordinator_status)

    sync = sub.add_parser("sync", help="this box's federated sync")
    ss = sync.add_subparsers(dest="sync_command", metavar="ACTION", required=True)
    bs = ss.add_parser("status", help="pending updates, last contact and acknowledgement, why sync is off")
    add_json_flag(bs)
    bs.set_defaults(handler=cmd_sync_status)

    b = bench_sub.add_parser("sync", help="bytes on the wire per round per clinic, link-up to accepted, and lost/duplicated/resent under a dropping link")
    b.add_argument("--cut-every", type=float, default=5.0, help="seconds between the dropping proxy's cuts (default 5)")
    b.add_argument("--keep", type=Path, default=None, help="build the federation here and keep it (default: a temporary folder)")
    add_json_flag(b)
    b.set_defaults(handler=cmd_bench_sync)


def _home_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", type=Path, default=None, help="coordinator home (default: MAMMO_COORDINATOR_HOME, else $MAMMO_HOME/coordinator)")


def coordinator_home(args: argparse.Namespace) -> Path:
    if args.home is not None:
        return Path(args.home)
    env = os.environ.get("MAMMO_COORDINATOR_HOME")
    settings: Settings = args.settings
    return Path(env) if env else settings.home / "coordinator"


def cmd_up(args: argparse.Namespace) -> int:
    from provisioning.authority import Authority
    from provisioning.cli import authority_passphrase
    from sync.coordinator import service
    from sync.coordinator.strategy import StrategyConfig

    settings: Settings = args.settings
    auth = Authority.open(args.authority, authority_passphrase(settings))
    host = args.host or settings.sync_coordinator_host
    port = settings.sync_coordinator_port if args.port is None else args.port
    base = args.base_release
    if base is None:
        from models.release_files import default_release_dir

        base = default_release_dir()
    paths = service.prepare(coordinator_home(args), auth, Path(base), sorted({host, "127.0.0.1", "localhost"}))
    cfg = StrategyConfig.from_settings(settings)
    run_config = {"buffer-k": str(cfg.buffer_k), "deadline-s": str(cfg.deadline_s), "min-updates": str(cfg.min_updates),
                  "max-staleness": str(cfg.max_staleness), "staleness-exponent": str(cfg.staleness_exponent)}
    coord = service.Coordinator(paths, auth, host=host, port=port, poll_s=settings.sync_poll_s, reply_timeout_s=settings.sync_reply_timeout_s,
                                admit_every_s=settings.sync_admit_every_s, run_config=run_config)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    coord.start(stop)
    print(f"Coordinator up at {coord.address} (home {paths.root}); Ctrl-C to stop.", flush=True)
    try:
        while not stop.wait(1.0):
            if coord.superlink is not None and not coord.superlink.alive():
                raise SyncError(f"The SuperLink exited ({coord.superlink.proc.returncode}). Fix: read {coord.superlink.log_path}.")
    finally:
        coord.stop()
    return EXIT_OK


def coordinator_status(home: Path, now: float | None = None) -> dict[str, Any]:
    """What `mammo coordinator status --json` prints (and the console's coordinator view reads)."""
    from sync.coordinator import service, store

    now = time.time() if now is None else now
    paths = service.CoordinatorPaths(home)
    state = paths.read_state()
    db = store.open_store(home)
    try:
        st = store.status(db, now=now)
    finally:
        db.conn.close()
    links = service.read_json(home / "links.json") or {}
    running = service.read_json(home / "running.json")
    admitted = service.read_json(paths.admitted) or {}
    seen = {b["box_id"]: b for b in st["boxes"]}
    clinics = []
    for a in sorted((admitted.get("nodes") or {}).values(), key=lambda a: str(a["box_id"])):
        box_id = str(a["box_id"])
        link = (links.get("boxes") or {}).get(box_id) or {}
        up = seen.get(box_id, {})
        clinics.append({"box_id": box_id, "node_id": a["node_id"], "admitted_at": a["admitted_at"], "connected": box_id in (links.get("connected") or []),
                        "last_contact_at": link.get("last_contact_at"), "model_version": link.get("model_version"),
                        "pending_on_box": (link.get("outbox") or {}).get("pending"), "last_update_at": up.get("last_received_at"),
                        "updates": up.get("updates", 0), "aggregated": up.get("aggregated", 0), "rejected": up.get("rejected", 0),
                        "evaluation": up.get("last_local_metrics", {}), "last_release": link.get("release_result")})
    releases = [{"version": m["version"], "generation": m["generation"], "round": m["round"], "created_at": m["created_at"]} for m in st["models"]]
    return {"home": str(home), "running": running is not None, "address": (running or {}).get("address"), "base_version": state["base_version"],
            "current_version": releases[-1]["version"] if releases else None, "clinics": clinics, "refused": admitted.get("refused", []),
            "pending_updates": st["buffered"], "oldest_pending_age_s": st["oldest_buffered_age_s"], "updates": st["updates"],
            "duplicates_received": st["duplicates_received"], "open_round": st["open_round"], "rounds": st["rounds"], "releases": releases}


def cmd_coordinator_status(args: argparse.Namespace) -> int:
    s = coordinator_status(coordinator_home(args))
    lines = [f"Coordinator {s['home']}: {'running at ' + str(s['address']) if s['running'] else 'not running'}; model {s['current_version']}",
             f"  pending updates {s['pending_updates']}, rounds {len(s['rounds'])}, releases {len(s['releases'])}"]
    for c in s["clinics"]:
        lines.append(f"  box {c['box_id'][:8]}  {'online ' if c['connected'] else 'offline'}  model {c['model_version']}  updates {c['updates']}  "
                     f"last contact {_ago(c['last_contact_at'])}")
    emit(args, s, "\n".join(lines))
    return EXIT_OK


def box_sync_status(settings: Settings, now: float | None = None) -> dict[str, Any]:
    """What `mammo sync status --json` prints: the outbox, the last exchange, and why sync is off if it is."""
    from edge_agent.store import open_database
    from provisioning import enrolment
    from sync import box_side, outbox, service

    now = time.time() if now is None else now
    reason = service.why_not(settings)
    kit = enrolment.installed_kit(enrolment.folder_of(settings))
    db = open_database(settings.db_path, max_size_mb=settings.db_max_size_mb)
    try:
        ob = outbox.status(db, now=now).as_dict()
    finally:
        db.conn.close()
    link = box_side.read_link(settings.home)
    return {"enabled": reason is None, "reason": reason, "coordinator": settings.sync_superlink or (kit.coordinator if kit else None),
            "pending": ob["pending"], "pending_bytes": ob["pending_bytes"], "oldest_pending_age_s": ob["oldest_pending_age_s"],
            "last_sync_at": link.get("last_contact_at"), "last_ack_at": ob["last_ack_at"] or link.get("last_ack_at"),
            "model_version": link.get("model_version"), "last_release": link.get("last_release"), "outbox": ob}


def cmd_sync_status(args: argparse.Namespace) -> int:
    s = box_sync_status(args.settings)
    text = (f"Sync {'on' if s['enabled'] else 'off (' + str(s['reason']) + ')'}; coordinator {s['coordinator']}\n"
            f"  waiting to sync: {s['pending']} update(s); last sync {_ago(s['last_sync_at'])}; last acknowledgement {_ago(s['last_ack_at'])}")
    emit(args, s, text)
    return EXIT_OK


def cmd_bench_sync(args: argparse.Namespace) -> int:
    from sync.flower.bench import run

    result = run(cut_every_s=args.cut_every, keep=args.keep)
    emit(args, result, _bench_text(result))
    return EXIT_OK


def _bench_text(r: dict[str, Any]) -> str:
    lines = ["Federated sync over Flower, loopback with TLS (measured on this machine):"]
    for c in r["per_clinic"]:
        lines.append(f"  box {c['box']}: {c['bytes_up']:,} B up, {c['bytes_down']:,} B down for one round; link-up to accepted {c['link_up_to_accepted_s']:.1f} s")
    d = r["dropping_link"]
    lines.append(f"  dropping link (cut every {d['cut_every_s']} s, {d['cuts']} cuts): lost {d['lost']}, duplicated {d['duplicated']}, "
                 f"resent {d['resent_bytes']:,} B vs {d['baseline_up_bytes']:,} B without drops")
    return "\n".join(lines)


def _ago(at: float | None) -> str:
    if at is None:
        return "never"
    s = max(0, int(time.time() - float(at)))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"
