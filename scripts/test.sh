#!/usr/bin/env bash
# The test suite on a fresh machine: every lane under tests/ (docs/testing.md).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/scripts/setup-env.sh"
cd "$root"
if [ "${CI:-}" = "true" ]; then
  # CI sees what a new machine sees: empty Triton and TorchInductor caches, so every kernel
  # is compiled from scratch (a warm cache once hid a compile failure, issue 8).
  # The CPU attention kernel (kernels/cpu_attention.cpp) is built from scratch too.
  TRITON_CACHE_DIR="$(mktemp -d -t hrm-fast-triton-XXXXXX)"
  TORCHINDUCTOR_CACHE_DIR="$(mktemp -d -t hrm-fast-inductor-XXXXXX)"
  HRM_FAST_CACHE_DIR="$(mktemp -d -t hrm-fast-cache-XXXXXX)"
  export TRITON_CACHE_DIR TORCHINDUCTOR_CACHE_DIR HRM_FAST_CACHE_DIR
  trap 'rm -rf "$TRITON_CACHE_DIR" "$TORCHINDUCTOR_CACHE_DIR" "$HRM_FAST_CACHE_DIR"' EXIT
  echo "test: fresh caches $TRITON_CACHE_DIR $TORCHINDUCTOR_CACHE_DIR $HRM_FAST_CACHE_DIR" >&2
fi
python -m pytest -q tests "$@"
