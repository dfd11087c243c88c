"""Exit codes and output helpers every ``mammo`` subcommand shares.

A leaf module: it imports nothing from the project, so ``models``,
``provisioning`` and ``hardware_profiles`` can register their subcommands
without importing the daemon (``edge_agent.cli`` loads them by name and
re-exports these for the box's own commands).  The contract is in
pyproject.toml (``[tool.importlinter]``).

Exit codes:
    0  success
    1  the operation failed (a MammoError: the message says how to recover)
    2  usage or settings error
    3  finished, but some inputs were refused (e.g. files quarantined)
    130 interrupted (Ctrl-C)

Reporting subcommands take ``--json`` and then print exactly one JSON object on
the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str | None = None) -> None:
    """Print the human text, then (with --json) the one JSON object on the last line."""
    if text and not getattr(args, "json", False):
        print(text)
    if getattr(args, "json", False):
        print(json.dumps(payload, ensure_ascii=False, default=str))
    elif text is None:
        print(json.dumps(payload, ensure_ascii=False, indent=2, default=str))


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line of stdout")
