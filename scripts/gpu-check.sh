#!/usr/bin/env bash
# Everything that needs a GPU, in one command: `hrm-fast check` (the start-up self-check, written
# to bench/results/check-*.json for a bug report), kernel parity on CUDA, the fused step and every
# fast-path variant (compile, CUDA graphs, bf16) against the reference step, then the bench.
# Extra arguments go to `hrm-fast bench` (e.g. --quick, --json my_gpu.json).
#
# scripts/gpu-check.sh --device mps: Apple silicon (reference backend only; untested on a Mac
# by the authors): the MPS tests, then a short smoke training run on MPS.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/scripts/setup-env.sh"
cd "$root"
if [ "${1:-}" = "--device" ] && [ "${2:-}" = "mps" ]; then
  if ! python -c "import torch, sys; sys.exit(0 if torch.backends.mps.is_available() else 1)"; then
    echo "gpu-check: --device mps: torch sees no Apple MPS device" >&2
    exit 2
  fi
  echo "== MPS tests" >&2
  python -m pytest -q tests/unit/test_device.py
  run="$(mktemp -d)"
  echo "== smoke training on MPS ($run)" >&2
  hrm-fast train --preset smoke --device mps --steps 30 --out "$run/run"
  exit 0
fi
if [ "${1:-}" = "--device" ]; then
  shift 2  # --device cuda (the default) selects the CUDA/ROCm checks below
fi
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-check: torch sees no CUDA GPU (torch $(python -c 'import torch; print(torch.__version__)'))" >&2
  exit 2
fi
export TRITON_INTERPRET=0
check_json="$root/bench/results/check-$(date -u +%Y%m%dT%H%M%SZ).json"
echo "== hrm-fast check ($check_json)" >&2
hrm-fast check --device cuda --json "$check_json"
echo "== parity on $(python -c 'import torch; print(torch.cuda.get_device_name())')" >&2
python -m pytest -q tests -m "interpret or cuda"
echo "== bench" >&2
hrm-fast bench --device cuda "$@"
# Data parallel (NCCL): the parity run above includes tests/distributed/test_distributed.py's 2-GPU NCCL +
# CUDA-graphs test, which skips with fewer than 2 GPUs; with 2 or more, the 1 vs N-GPU table.
n_gpu="$(python -c 'import torch; print(torch.cuda.device_count())')"
if [ "$n_gpu" -ge 2 ]; then
  echo "== data parallel on $n_gpu GPUs: hrm-fast bench --nproc $n_gpu" >&2
  hrm-fast bench --device cuda --nproc "$n_gpu"
fi
