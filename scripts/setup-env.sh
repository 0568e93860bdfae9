#!/usr/bin/env bash
# Create or reuse .venv and install hrm-fast with its test tools. Sourced by demo.sh and test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HRM_FAST_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv" >&2
  "$py" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "setup: installing torch (CUDA build)" >&2
    pip install -q torch
  else
    # CPU machines: the 2.13.0 CPU build (served from local disk where a wheel cache has it).
    echo "setup: installing torch==2.13.0" >&2
    pip install -q torch==2.13.0
  fi
fi
stamp="$venv/.hrm-fast-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "setup: installing hrm-fast and its dependencies" >&2
  pip install -q -e "$root[dev]"
  touch "$stamp"
fi
