"""The layers of the codebase: lower packages never import the daemon.

``models``, ``provisioning`` and ``hardware_profiles`` may use only the two leaf
modules ``edge_agent.errors`` and ``edge_agent.cliout`` (contracts in
pyproject.toml, ``[tool.importlinter]``).  A leaf must stay a leaf: importing it
may pull in nothing else of the project, or the lower packages would drag the
daemon in through it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = ("edge_agent", "kiosk_ui", "models", "sync", "provisioning", "hardware_profiles")


@pytest.mark.parametrize("leaf", ["edge_agent.errors", "edge_agent.cliout"])
def test_a_leaf_module_pulls_in_nothing_else_of_the_project(leaf):
    code = f"import sys, {leaf}; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {PROJECT!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60, check=True).stdout.split()
    assert out == sorted(["edge_agent", leaf])


def test_the_box_cli_still_offers_the_shared_output_helpers():
    """The box's own subcommands import EXIT codes and emit from edge_agent.cli; they are the leaf's, not copies."""
    from edge_agent import cli, cliout

    assert (cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_REFUSED, cli.EXIT_INTERRUPTED) == (0, 1, 2, 3, 130)
    assert cli.emit is cliout.emit and cli.add_json_flag is cliout.add_json_flag


def lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache", "--no-logo", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_the_import_contracts_hold():
    r = lint_imports()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_a_lower_package_importing_the_daemon_breaks_the_contract(tmp_path):
    """The contract has teeth: without its declared exception, provisioning.kit's use of the box's settings schema is reported."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    line = '  "provisioning.kit -> edge_agent.settings",\n'
    assert line in text
    config = tmp_path / "pyproject.toml"
    config.write_text(text.replace(line, ""), encoding="utf-8")
    r = lint_imports("--config", str(config))
    assert r.returncode == 1
    assert "provisioning.kit -> edge_agent.settings" in r.stdout
