"""``mammo report``: show a study's report (FHIR Bundle or plain), list delivery states, send again.

The parser imports nothing heavy; handlers import fhir.resources and the box
when they run.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from edge_agent.cliout import EXIT_OK, add_json_flag, emit


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("report", help="screening reports out: the FHIR Bundle of a study, delivery states, send again")
    rsub = r.add_subparsers(dest="report_command", metavar="ACTION", required=True)
    p = rsub.add_parser("show", help="print one study's report: --format fhir prints its FHIR R4 transaction Bundle (identified: audited)")
    p.add_argument("study_uid")
    p.add_argument("--format", choices=("fhir", "text"), default="text")
    p.set_defaults(handler=cmd_show)
    p = rsub.add_parser("list", help="delivery state of the latest reports and SMS notices")
    p.add_argument("--state", default=None, help="only this state (e.g. retrying, failed, awaiting_confirmation)")
    p.add_argument("--limit", type=int, default=50)
    add_json_flag(p)
    p.set_defaults(handler=cmd_list)
    p = rsub.add_parser("send", help="queue a study's FHIR report now (again after 'failed', or after switching reporting on)")
    p.add_argument("study_uid")
    add_json_flag(p)
    p.set_defaults(handler=cmd_send)


def cmd_show(args: argparse.Namespace) -> int:
    from edge_agent.audit_cli import record
    from edge_agent.box import open_box
    from edge_agent.reporting import facts, fhir, state

    box = open_box(args.settings)
    try:
        s = box.settings
        f = facts.gather(box.db, args.study_uid, box_id=box.keystore.box_id, box_name=s.box_name, box_city=s.box_city,
                         master_key=box.keystore.master_key() if args.format == "fhir" else None)
        if args.format == "fhir":
            bundle = fhir.build_bundle(f, patient_id_system=s.report_patient_id_system)
            fhir.validate(bundle)
            record(box, "report_show", args.study_uid, {"format": "fhir", "entries": len(bundle["entry"])})
            print(json.dumps(bundle, ensure_ascii=False, indent=2))
            return EXIT_OK
        lines = [f"Study {f.study_uid} (reference {f.pseudonym})"]
        if f.ai is not None:
            lines.append(f"  AI triage      : {f.ai.status} {f.ai.triage or ''} (model {f.ai.model_version}; a pre-assessment, not a diagnosis)")
        c = f.confirmation
        lines.append(f"  radiologist    : BI-RADS {c.birads}, density {c.density} ({c.source}, {c.entered_by})" if c else "  radiologist    : not yet")
        lines.append(f"  referral       : {'yes, by ' + f.referral.by if f.referral else 'no'}")
        for d in state.of_study(box.db, f.study_uid):
            lines.append(f"  {d.channel:<4} {d.target or '':<22} {d.state}{' - ' + d.detail if d.detail else ''}")
        print("\n".join(lines))
        return EXIT_OK
    finally:
        box.close()


def cmd_list(args: argparse.Namespace) -> int:
    from edge_agent.box import open_box
    from edge_agent.reporting import state

    box = open_box(args.settings)
    try:
        rows = state.latest(box.db, args.limit, args.state)
        counts = {f"{c}:{s}": n for (c, s), n in state.counts(box.db).items() if n}
        text = "\n".join([f"{d.study_uid[:28]:<28} {d.channel:<4} {d.target:<22} {d.state:<22} {d.detail[:80]}" for d in rows]) or "No reports yet."
        emit(args, {"counts": counts, "deliveries": [d.as_dict() for d in rows]}, text)
        return EXIT_OK
    finally:
        box.close()


def cmd_send(args: argparse.Namespace) -> int:
    from edge_agent.audit_cli import record
    from edge_agent.box import open_box
    from edge_agent.errors import ReportingError
    from edge_agent.reporting import facts, fhir, state
    from edge_agent.reporting.delivery import REPORT_QUEUE, route_fhir
    from edge_agent.store import transaction

    box = open_box(args.settings)
    try:
        s, uid = box.settings, args.study_uid
        if box.db.execute("SELECT 1 FROM ingest_studies WHERE study_uid = ?", [uid]).fetchone() is None:
            raise ReportingError(f"No study {uid[:40]!r} on this box. Fix: copy the UID from `mammo report list`.")
        dead = [r[0] for r in box.db.execute("SELECT id FROM jobs WHERE queue = ? AND state = 'dead' AND key LIKE ?", [REPORT_QUEUE, f"fhir:{uid}%"])]
        if dead:
            box.queue.requeue_dead(REPORT_QUEUE, dead)
            with transaction(box.db) as db:
                state.record(db, uid, "fhir", "queued", now=time.time(), detail="requeued by `mammo report send`")
            got = "queued"
        else:
            with transaction(box.db) as db:
                got = route_fhir(db, box.queue, s, uid, facts.confirmation(db, uid) is not None, time.time(),
                                 fhir.report_identifier(box.keystore.box_id, uid), key=f"fhir:{uid}:manual:{time.time():.0f}")
        record(box, "report_requeue", uid, {"state": got})
        payload: dict[str, Any] = {"study_uid": uid, "state": got}
        emit(args, payload, {"queued": "Queued: `mammo up` sends it when the endpoint answers.",
                             "delivered": "Already delivered; nothing to send.",
                             "disabled": "Not queued: report_fhir_enabled is off.",
                             "awaiting_confirmation": "Not queued: no radiologist BI-RADS/density yet; it goes once they are recorded."}[got])
        return EXIT_OK
    finally:
        box.close()
