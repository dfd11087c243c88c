#!/usr/bin/env bash
# Second README command: set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Lint (pyflakes, import order, bugbear, pyupgrade), strict types and the import contracts (layers) on the box's own packages first, as Flower and httpx do.
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache --no-logo
exec .venv/bin/python -m pytest "$@"
