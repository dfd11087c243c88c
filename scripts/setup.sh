#!/usr/bin/env bash
# Set up a fresh machine: system packages (apt), then .venv at the repository root.
# Idempotent: re-running only reinstalls when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then PY=$cand; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python 3.11 is required (apt-get install python3.11 python3.11-venv)" >&2; exit 2; }

apt_install() {
  command -v apt-get >/dev/null || { echo "setup: apt-get not found; install $* by hand" >&2; return 0; }
  local SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# System packages the box and its tests need (see README, "What gets installed").
NEED_APT=()
"$PY" -c 'import venv, ensurepip' 2>/dev/null || NEED_APT+=(python3.11-venv)
for pkg in $(cat scripts/apt-packages.txt 2>/dev/null); do
  dpkg -s "$pkg" >/dev/null 2>&1 || NEED_APT+=("$pkg")
done
[ ${#NEED_APT[@]} -eq 0 ] || apt_install "${NEED_APT[@]}"

stamp=.venv/.mammo-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned in pyproject.toml to the CPU build on local disk; do not unpin it.
.venv/bin/python -m pip install -q -e '.[dev]'
# The TPM protector is optional: without it the box runs with its passphrase protector (and the TPM tests skip, saying why).
if pkg-config --exists tss2-esys 2>/dev/null; then
  .venv/bin/python -m pip install -q -e '.[tpm]' || echo "setup: tpm2-pytss did not install; keys are protected by the passphrase only" >&2
fi
echo "$want" > "$stamp"
