#!/usr/bin/env bash
# The main job on a fresh machine: a CPU-sized training run on the bundled ARC-AGI-1 data,
# then held-out evaluation, the input-sensitivity (safeguard) report and the dashboard.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/scripts/setup-env.sh"
out="${1:-$root/runs/demo}"
if [ -d "$out/checkpoints" ]; then
  hrm-fast train --preset smoke --out "$out" --resume
else
  hrm-fast train --preset smoke --out "$out"
fi
hrm-fast eval "$out" --n-aug 4
hrm-fast probe "$out" --json "$out/probe.json"
hrm-fast report "$out" --html
echo "demo: metrics $out/metrics.jsonl, evaluation $out/eval.json and $out/eval.png, probe $out/probe.json"
echo "demo: dashboard $out/report.png (and report.html)"
