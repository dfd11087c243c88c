#!/usr/bin/env bash
# Build the INT8 TFLite model in its own environment (.venv-litert).
# litert-torch brings protobuf 7, which breaks flwr, so it never enters .venv.
#
#   scripts/build_tflite.sh WEIGHTS.pt CALIB.npy OUT.tflite
#
# First time: python3 -m venv .venv-litert &&
#   .venv-litert/bin/pip install torch==2.13.0 litert-torch
# (torch pinned: unpinned it pulls a multi-GB CUDA build.)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${LITERT_PYTHON:-$here/.venv-litert/bin/python}"
if [ ! -x "$py" ]; then
  echo "error: $py not found. Create it: python3 -m venv .venv-litert && .venv-litert/bin/pip install torch==2.13.0 litert-torch" >&2
  exit 2
fi
cd "$here"
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m models.export.tflite_convert "$@"
