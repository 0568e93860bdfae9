"""Data-parallel step timing, run by ``hrm-fast bench --nproc N``: once as one plain process
and once under ``torchrun --nproc-per-node N``, with the same batch per rank (weak scaling).

Rank 0 writes JSON: mean step time (the slowest rank's), and, with N > 1, the bytes each
collective of the step moves and their time measured *in isolation* (the same buffers,
all-reduced or gathered alone, repeated): the step's communication cost, not an overlap
profile.

usage: [torchrun --nproc-per-node N] bench/dp_step.py --device cpu --preset smoke --json OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from hrm_fast import distributed
from hrm_fast.presets import from_name
from hrm_fast.trainer.step import Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, n: int, device, dp) -> float:
    """Mean seconds per call over n calls, the slowest rank's."""
    sync(device)
    if dp is not None:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    dt = torch.tensor([(time.perf_counter() - t0) / n], dtype=torch.float64)
    if dp is not None:
        dt = dt.to(dp.comm_device)
        torch.distributed.all_reduce(dt, op=torch.distributed.ReduceOp.MAX)
    return float(dt.item())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--batch-per-rank", type=int, default=0, help="0: the preset's batch")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cuda-graphs", action="store_true")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()

    cfg = from_name(a.preset)
    t = cfg.train
    t.device, t.cuda_graphs = a.device, a.cuda_graphs
    dp = distributed.setup(a.device, "auto", 600)
    world = 1 if dp is None else dp.world
    per_rank = a.batch_per_rank or t.batch_size
    t.batch_size = per_rank * world
    try:
        trainer = Trainer(cfg, dp=dp)
        for _ in range(a.warmup):
            trainer.step()
        step_s = timed(trainer.step, a.steps, trainer.device, dp)
        loss = trainer.read_metrics()["loss"]
        rec = {
            "world": world,
            "backend": None if dp is None else dp.backend,
            "device": str(trainer.device),
            "preset": a.preset,
            "batch_per_rank": per_rank,
            "global_batch": t.batch_size,
            "step_s": step_s,
            "loss_finite": loss == loss,
            "torch_threads": torch.get_num_threads(),
        }
        if dp is not None:
            emb = trainer.model.inner.puzzle_emb
            ids = emb.local_ids
            rows = torch.zeros_like(emb.local_weights)
            flat = dp._flat_grad
            saved = flat.clone()
            n = max(10, a.steps)
            rec["allreduce_bytes"] = dp.gradient_bytes
            rec["allreduce_s"] = timed(dp.average_gradients, n, trainer.device, dp)
            gathered = world * (ids.numel() * ids.element_size() + rows.numel() * 4)
            rec["puzzle_gather_bytes"] = gathered
            rec["puzzle_gather_s"] = timed(lambda: dp.gather_rows(ids, rows), n, trainer.device, dp)
            flat.copy_(saved)
            # The loss's batch statistics: p_sum, y_sum, n_valid, a_sum gathered forward and
            # the p_sum gradient all-reduced backward (a few hundred bytes: latency).
            p_sum = torch.zeros(per_rank, cfg.model.vocab_size, device=trainer.device)
            counts = torch.zeros(per_rank, cfg.model.vocab_size, dtype=torch.int32,
                                 device=trainer.device)  # fmt: skip

            def loss_stats():
                for x in (p_sum, counts, counts[:, 0], counts):
                    dp._all_gather(x)
                torch.distributed.all_reduce(dp._all_gather(p_sum).to(dp.comm_device))

            rec["loss_stats_s"] = timed(loss_stats, n, trainer.device, dp)
            rec["collectives_per_step"] = 8
        if dp is None or dp.is_main:
            Path(a.json).write_text(json.dumps(rec, indent=1))
    finally:
        if dp is not None:
            dp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
