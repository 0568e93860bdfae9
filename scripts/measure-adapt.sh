#!/usr/bin/env bash
# Does test-time adaptation beat the blank id on tasks the model never saw? A CPU-sized check
# (docs/arc-prize.md): train a small model on ARC-AGI-1 training tasks, then answer ARC-AGI-1
# evaluation tasks (their demonstrations never trained on) with (a) the blank id, (b) adapt
# --mode embeddings, (c) adapt --mode full, the two adaptations at the same time budget.
# Environment: STEPS (training steps), BUDGET (minutes per adaptation), TASKS (unseen tasks).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/scripts/setup-env.sh"
out="${1:-$root/runs/adapt-cpu}"
steps="${STEPS:-300}"
budget="${BUDGET:-3}"
n_tasks="${TASKS:-12}"
canvas=10
mkdir -p "$out/unseen" "$out/scored"

# The unseen tasks: a challenges file without solutions (what adapt gets), and the same file
# with its solutions beside it in another folder (what predict scores against).
python - "$out" "$n_tasks" "$canvas" <<'EOF'
import json, sys
from hrm_fast.arc_files import load_tasks
out, n, canvas = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tasks = load_tasks("arcagi", "evaluation", canvas)[:n]
ch = {t.id: {"train": [{"input": a.tolist(), "output": b.tolist()} for a, b in t.train_pairs],
             "test": [{"input": a.tolist()} for a, _ in t.test_pairs]} for t in tasks}
sol = {t.id: [b.tolist() for _, b in t.test_pairs] for t in tasks}
for d in ("unseen", "scored"):
    with open(f"{out}/{d}/arc1_challenges.json", "w") as f:
        json.dump(ch, f)
with open(f"{out}/scored/arc1_solutions.json", "w") as f:
    json.dump(sol, f)
EOF

if [ ! -d "$out/base/checkpoints" ]; then
  hrm-fast train --preset smoke --out "$out/base" --canvas "$canvas" --max-tasks 0 \
    --include-eval-demos false --eval-source none --batch-size 16 --steps "$steps" \
    --checkpoint-every "$steps" --log-every 50
fi
hrm-fast predict "$out/base" --source "$out/scored/arc1_challenges.json" --out "$out/blank" \
  --n-aug 8 --render 0
for mode in embeddings full; do
  if [ ! -d "$out/$mode/checkpoints" ]; then
    hrm-fast adapt "$out/base" --source "$out/unseen/arc1_challenges.json" --out "$out/$mode" \
      --mode "$mode" --time-budget "$budget" --log-every 50
  fi
  hrm-fast predict "$out/$mode" --source "$out/scored/arc1_challenges.json" \
    --out "$out/$mode/predict" --n-aug 8 --render 0
done
python - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| answered with | adaptation steps | pass@1 | pass@2 | pixel accuracy |")
print("|---|---|---|---|---|")
for name, d in (("blank id", out / "blank"), ("adapt --mode embeddings", out / "embeddings/predict"),
                ("adapt --mode full", out / "full/predict")):
    r = json.loads((d / "predict.json").read_text())
    o = r["overall"]
    print(f"| {name} | {r['step'] if d.name == 'predict' else 0} | {o['pass1']:.3f} | "
          f"{o['pass2']:.3f} | {o['pixel_accuracy']:.3f} |")
EOF
