"""``mammo``: the one command-line entry point of the box.

Subcommands are registered by the package that owns them (``register``
functions), so this module stays a switchboard.  Reporting subcommands take
``--json`` and then print exactly one JSON object on the last line of stdout.

Exit codes:
    0  success
    1  the operation failed (a MammoError: the message says how to recover)
    2  usage or settings error
    3  finished, but some inputs were refused (e.g. files quarantined)
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable

# Re-exported: the box's own subcommands import them from here; lower packages use edge_agent.cliout (a leaf).
from edge_agent.cliout import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, add_json_flag, emit
from edge_agent.errors import MammoError, SettingsError
from edge_agent.settings import Settings

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "add_json_flag", "build_parser", "emit", "main"]

# Packages that add subcommands: module path -> present only once built.
PLUGINS = ("edge_agent.commands", "edge_agent.keys_cli", "edge_agent.audit_cli", "edge_agent.ingest.cli", "models.cli", "hardware_profiles.cli", "edge_agent.inference.cli", "kiosk_ui.cli", "provisioning.cli", "edge_agent.console.cli",
           "edge_agent.learning.cli", "sync.he_cli", "sync.cli", "sync.fl_cli", "edge_agent.reporting.cli", "edge_agent.pacs.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mammo", description="MammoAI-TR Edge: offline mammography screening triage box.")
    parser.add_argument("--config", type=str, default=None, help="settings TOML (default: $MAMMO_HOME/mammo.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser("bench", help="measure speed beside a named peer")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    for name in PLUGINS:
        if importlib.util.find_spec(name.rsplit(".", 1)[0]) is None or importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(sub, bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        from pathlib import Path

        args.settings = Settings.load(Path(args.config) if args.config else None)
        logging.getLogger().setLevel(logging.DEBUG if args.verbose else args.settings.log_level.upper())
        return int(handler(args) or 0)
    except SettingsError as exc:
        print(f"mammo: settings error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MammoError as exc:
        print(f"mammo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
