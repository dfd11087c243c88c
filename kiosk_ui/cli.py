"""``mammo user ...`` (kiosk accounts), ``mammo kiosk ...`` and ``mammo bench kiosk``."""

from __future__ import annotations

import argparse
import getpass
import sys

from edge_agent.box import open_box
from edge_agent.cli import EXIT_FAILED, EXIT_OK, add_json_flag, emit
from edge_agent.errors import KioskError


def register(sub: argparse._SubParsersAction, bench_sub: argparse._SubParsersAction) -> None:
    u = sub.add_parser("user", help="kiosk accounts: add, list, passwd, unlock")
    usub = u.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    p = usub.add_parser("add", help="create a kiosk account (the first one should be an admin)")
    p.add_argument("username")
    p.add_argument("--role", required=True, choices=("doctor", "technician", "radiologist", "admin"))
    p.add_argument("--name", default="", help="full name shown in the kiosk and on referrals")
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin (for scripts)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_user_add)
    p = usub.add_parser("list", help="accounts, roles and lock state")
    add_json_flag(p)
    p.set_defaults(handler=cmd_user_list)
    p = usub.add_parser("passwd", help="set a new password (signs the user out everywhere, clears a lock)")
    p.add_argument("username")
    p.add_argument("--password-stdin", action="store_true")
    add_json_flag(p)
    p.set_defaults(handler=cmd_user_passwd)
    p = usub.add_parser("unlock", help="unlock an account locked after wrong passwords")
    p.add_argument("username")
    add_json_flag(p)
    p.set_defaults(handler=cmd_user_unlock)

    k = sub.add_parser("kiosk", help="the family doctor's kiosk")
    ksub = k.add_subparsers(dest="kiosk_command", metavar="ACTION", required=True)
    p = ksub.add_parser("demo", help="ingest made-up demo studies (fake Turkish patients) through the real ingest service")
    p.add_argument("--studies", type=int, default=3)
    p.add_argument("--synthetic-results", action="store_true",
                   help="also write synthetic triage results (model 'synthetic-demo') so the kiosk can be shown without a model")
    add_json_flag(p)
    p.set_defaults(handler=cmd_kiosk_demo)

    p = bench_sub.add_parser("kiosk", help="worklist and study page latency with many studies, beside a static file and http.server")
    p.add_argument("--studies", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=200, help="requests per measured page")
    add_json_flag(p)
    p.set_defaults(handler=cmd_bench_kiosk)


def _services(args):
    from kiosk_ui.services import KioskServices

    box = open_box(args.settings)
    return box, KioskServices.from_box(box)


def _password(args, prompt: str) -> str:
    stdin = getattr(args, "stdin", None) or sys.stdin  # tests hand in their own stream
    if args.password_stdin or not stdin.isatty():
        return stdin.readline().rstrip("\n")
    first = getpass.getpass(prompt)
    if getpass.getpass("Again: ") != first:
        raise KioskError("error.password_mismatch", "The two passwords differ; nothing was changed.")
    return first


def cmd_user_add(args: argparse.Namespace) -> int:
    box, svc = _services(args)
    try:
        user = svc.add_user(args.username, _password(args, f"Password for {args.username}: "), args.role, args.name)
    finally:
        svc.close()
        box.close()
    url = f"http://{args.settings.kiosk_host}:{args.settings.kiosk_port}/"
    emit(args, {"username": user.username, "role": user.role, "kiosk_url": url}, f"Created {user.role} '{user.username}'. Sign in at {url}")
    return EXIT_OK


def cmd_user_list(args: argparse.Namespace) -> int:
    box, svc = _services(args)
    rows = [{"username": u.username, "name": u.full_name, "role": u.role, "locked": locked} for u, locked in svc.users()]
    svc.close()
    box.close()
    text = "\n".join(f"{r['username']:20s} {r['role']:12s} {'LOCKED ' if r['locked'] else ''}{r['name']}" for r in rows) or "no kiosk accounts yet"
    emit(args, {"users": rows}, text)
    return EXIT_OK


def cmd_user_passwd(args: argparse.Namespace) -> int:
    box, svc = _services(args)
    try:
        svc.set_password(args.username, _password(args, f"New password for {args.username}: "))
    finally:
        svc.close()
        box.close()
    emit(args, {"username": args.username, "changed": True}, f"Password of '{args.username}' changed; their sessions were ended.")
    return EXIT_OK


def cmd_user_unlock(args: argparse.Namespace) -> int:
    box, svc = _services(args)
    try:
        svc.unlock(args.username)
    finally:
        svc.close()
        box.close()
    emit(args, {"username": args.username, "unlocked": True}, f"'{args.username}' is unlocked.")
    return EXIT_OK


def cmd_kiosk_demo(args: argparse.Namespace) -> int:
    from kiosk_ui import synthetic

    box, svc = _services(args)
    triages = ("priority_radiologist_review", "no_suspicious_finding", "radiologist_review")
    made = []
    try:
        if args.synthetic_results:
            synthetic.write_release_info(box.settings.models_dir)
        for i in range(args.studies):
            uid = synthetic.ingest_study(svc.ingest, seed=i, size=256)
            if args.synthetic_results:
                synthetic.write_result(svc.ingest, uid, triage=triages[i % 3], score=(0.9, 0.1, 0.6)[i % 3])
            made.append(uid)
    finally:
        svc.close()
        box.close()
    emit(args, {"studies": made, "synthetic_results": args.synthetic_results}, f"Ingested {len(made)} demo stud{'y' if len(made) == 1 else 'ies'}.")
    return EXIT_OK if made or not args.studies else EXIT_FAILED


def cmd_bench_kiosk(args: argparse.Namespace) -> int:
    from kiosk_ui.bench import run_bench

    result = run_bench(studies=args.studies, requests=args.requests)
    p = result["pages"]
    text = "\n".join(
        f"{name:22s} p50 {v['p50_ms']:7.2f} ms  p95 {v['p95_ms']:7.2f} ms" for name, v in p.items()
    ) + f"\nworklist p50 / http.server p50 of the same HTML: {result['ratio_worklist_vs_http_server_p50']:.1f}x"
    emit(args, result, text)
    return EXIT_OK
