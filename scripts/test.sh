#!/usr/bin/env bash
# The test suite on a fresh machine: unit, Triton-interpreter parity and static GPU-compile tests.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/scripts/setup-env.sh"
cd "$root"
python -m pytest -q tests "$@"
