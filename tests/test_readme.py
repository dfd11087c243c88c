"""The README is the front door: every command the CLI offers is documented there."""

import argparse
import re
from pathlib import Path

from edge_agent.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_mammo_command_is_in_the_readme():
    commands = _subcommands(build_parser())
    missing = [f"mammo {name}" for name in commands if name != "bench" and f"`mammo {name}" not in README]
    bench = _subcommands(commands["bench"])
    missing += [f"mammo bench {name}" for name in bench if not re.search(rf"`mammo bench [^`]*\b{name}\b", README)]
    assert not missing, f"undocumented commands: {missing}"


def test_readme_shows_the_two_commands_and_ci_runs_the_second():
    assert "bash scripts/up.sh" in README and "bash scripts/test.sh" in README
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
