#!/usr/bin/env bash
# First README command: set everything up, then start the appliance with embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mammo up "$@"
