"""``mammo export`` (studies to a hospital PACS) and ``mammo worklist`` (the mammography unit's scheduled screenings).

Heavy imports (pynetdicom, highdicom) happen inside the handlers: the parser loads with every ``mammo`` command.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from edge_agent.cliout import EXIT_FAILED, EXIT_OK, add_json_flag, emit

if TYPE_CHECKING:
    from edge_agent.box import Box

WAIT_S = 300.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ex = sub.add_parser("export", help="send studies to a hospital PACS (C-STORE) with the AI result as SR and heatmaps")
    exs = ex.add_subparsers(dest="export_command", metavar="ACTION", required=True)
    p = exs.add_parser("study", help="queue one study to a destination in pacs_destinations (once: a repeat finds the first)")
    p.add_argument("study_uid", help="the study UID as the box knows it (kiosk study page, `mammo export list`)")
    p.add_argument("--to", required=True, metavar="AE_TITLE@host:port", help="a destination configured in pacs_destinations")
    p.add_argument("--wait", action="store_true", help="send now, in this process, and wait until it is sent or failed")
    p.add_argument("--timeout", type=float, default=WAIT_S, help=f"with --wait: give up waiting after this many seconds (default {WAIT_S:g}); the export stays queued")
    add_json_flag(p)
    p.set_defaults(handler=cmd_export_study)
    p = exs.add_parser("list", help="per-destination export state (queued, sending, retrying, sent, failed)")
    p.add_argument("--study", default=None, help="only this study")
    add_json_flag(p)
    p.set_defaults(handler=cmd_export_list)

    wl = sub.add_parser("worklist", help="the modality worklist the mammography unit reads (C-FIND on dicom_port)")
    wls = wl.add_subparsers(dest="worklist_command", metavar="ACTION", required=True)
    p = wls.add_parser("add", help="schedule a screening")
    p.add_argument("--patient-id", required=True, help="the woman's ID as the hospital knows it (e.g. T.C. kimlik no)")
    p.add_argument("--name", required=True, help='"SURNAME^GIVEN", e.g. "ÇELİK^AYŞE"')
    p.add_argument("--birth-date", required=True, metavar="YYYYMMDD")
    p.add_argument("--accession", required=True, help="accession number the images will carry (1-16 characters)")
    p.add_argument("--scheduled", default=None, metavar="YYYYMMDDHHMM", help="when, clinic time (default: now)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_worklist_add)
    p = wls.add_parser("list", help="a day's scheduled screenings (default today, clinic time)")
    p.add_argument("--date", default=None, metavar="YYYYMMDD")
    add_json_flag(p)
    p.set_defaults(handler=cmd_worklist_list)


def _box(args: argparse.Namespace) -> Box:
    from edge_agent.box import open_box

    return open_box(args.settings)


def cmd_export_study(args: argparse.Namespace) -> int:
    from edge_agent.pacs import service
    from edge_agent.pacs.export import describe

    box = _box(args)
    try:
        state = service.export_study(box.queue, box.settings, args.study_uid, args.to, requested_by="cli")
        if args.wait:
            state = service.wait_done(box, state.study_uid, state.destination, args.timeout) or state
        emit(args, {"export": state.to_json()}, describe(state))
        return EXIT_OK if not args.wait or state.state == "sent" else EXIT_FAILED
    finally:
        box.close()


def cmd_export_list(args: argparse.Namespace) -> int:
    from edge_agent.pacs import service
    from edge_agent.pacs.export import describe

    box = _box(args)
    try:
        states = service.export_states(box.db, args.study)
        emit(args, {"exports": [s.to_json() for s in states]}, "\n".join(f"{s.study_uid}  {describe(s)}" for s in states) or "no exports")
        return EXIT_OK
    finally:
        box.close()


def cmd_worklist_add(args: argparse.Namespace) -> int:
    from edge_agent.pacs import service

    box = _box(args)
    try:
        entry = service.schedule_screening(service.worklist_book(box), patient_id=args.patient_id, name=args.name, birth_date=args.birth_date,
                                           accession=args.accession, scheduled=args.scheduled, requested_by="cli")
        emit(args, {"entry": entry.to_json()}, f"scheduled #{entry.id} {entry.scheduled} accession {entry.accession}")
        return EXIT_OK
    finally:
        box.close()


def cmd_worklist_list(args: argparse.Namespace) -> int:
    from edge_agent.pacs import service

    box = _box(args)
    try:
        entries = service.worklist_today(service.worklist_book(box), args.date)
        text = "\n".join(f"#{e.id} {e.scheduled} {e.accession} {e.patient_id} {e.name} {e.state}" for e in entries) or "no scheduled screenings"
        emit(args, {"entries": [e.to_json() for e in entries]}, text)
        return EXIT_OK
    finally:
        box.close()
