#!/usr/bin/env bash
# First README command: set everything up, then start the appliance with embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MAMMO_HOME=${MAMMO_HOME:-$PWD/var}
if [ ! -f "$MAMMO_HOME/box.sqlite3" ]; then
  # First start: a demo clinic with three synthetic screening studies (fake women, marked DERIVED),
  # ingested through the same path as a modality's; the inference workers triage them once up.
  .venv/bin/mammo kiosk demo --studies 3
fi
exec .venv/bin/mammo up "$@"
