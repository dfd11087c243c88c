"""``mammo console``: opens the box (asking for the keystore passphrase at the terminal if needed), then starts the app.

Textual is imported only here, inside the handler: ``mammo`` builds every
subcommand's parser at each start, and the other commands must not pay for it.
"""

from __future__ import annotations

import argparse

from edge_agent.cli import EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("console", help="the technician's console (Textual): health, queues, keys, enrolment, models, audit, log")
    p.add_argument("--lang", choices=("tr", "en"), default=None, help="language of the console (default: the console_language setting)")
    p.set_defaults(handler=cmd_console)


def cmd_console(args: argparse.Namespace) -> int:
    from edge_agent.box import open_box
    from edge_agent.console.app import run

    box = open_box(args.settings)
    try:
        run(box, args.lang or args.settings.console_language)
    finally:
        box.close()
    return EXIT_OK
