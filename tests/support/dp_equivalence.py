"""Run by ``tests/distributed/test_distributed.py`` under ``torchrun --nproc-per-node 2``: data
parallel vs one process on the same data.

Every rank's sampler is replaced by one that draws the *global* batch from a generator seeded
the same way on every rank and keeps this rank's rows, so N ranks x batch B/N and one process x
batch B see the same examples. Rank 0 also trains the single-process reference (no
``torch.distributed`` in it) and writes what the test asserts to ``OUT.json``: per step the
loss and the gradient each optimiser step applies, and, at the end, whether every rank holds
bit-identical weights, optimiser state and puzzle-embedding table.

usage: torchrun --nproc-per-node 2 tests/support/dp_equivalence.py TASKS_DIR OUT.json STEPS
"""

from __future__ import annotations

import json
import sys

import torch

from hrm_fast import distributed
from hrm_fast.presets import from_name
from hrm_fast.trainer.step import Trainer


def config(tasks: str):
    cfg = from_name("debug")
    cfg.data.source = tasks
    cfg.train.batch_size = 4
    cfg.train.dtype = "fp32"  # the test holds ranks to fp32 rounding (auto is bf16 on bf16 CPUs)
    cfg.train.log_every = 1
    cfg.model.halt_exploration_prob = 0.0  # exploration draws [b] numbers: a per-rank stream
    return cfg


def same_data(trainer: Trainer, global_batch: int, rank: int) -> None:
    """Step i's batch: rows [rank*b, (rank+1)*b) of global batch i, drawn with seed 1000 + i."""
    sample, b, calls = trainer.sampler.sample, trainer.batch_size, [0]

    def sample_rows(batch_size: int):
        with torch.random.fork_rng():
            torch.manual_seed(1000 + calls[0])
            full = sample(global_batch)
        calls[0] += 1
        return {k: v[rank * b : (rank + 1) * b] for k, v in full.items()}

    trainer.sampler.sample = sample_rows


def record_gradients(trainer: Trainer) -> list[list[torch.Tensor]]:
    grads: list[list[torch.Tensor]] = []
    trainer.opt.register_step_pre_hook(
        lambda opt, args, kwargs: grads.append([p.grad.detach().clone() for p in trainer.params])
    )
    return grads


def run(trainer: Trainer, steps: int):
    grads = record_gradients(trainer)
    losses = []
    for _ in range(steps):
        trainer.step()
        losses.append(trainer.read_metrics())
    return losses, grads


def final_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach() for k, v in trainer.model.state_dict().items()}
    for i, p in enumerate(trainer.params):
        for k, v in trainer.opt.state[p].items():
            out[f"opt.{i}.{k}"] = v.detach().reshape(-1)
    return out


def main() -> int:
    tasks, out_path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = config(tasks)
    dp = distributed.setup("cpu", "gloo", 120)
    try:
        trainer = Trainer(cfg, dp=dp)
        same_data(trainer, cfg.train.batch_size, dp.rank)
        losses, grads = run(trainer, steps)
        flat = trainer.dp._flat_grad
        views = all(
            p.grad.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
            for p in trainer.params
        )
        state = final_state(trainer)
        per_rank = dp.gather_tensors(state)
        if not dp.is_main:
            return 0

        ref = Trainer(config(tasks))  # one process, batch B: no torch.distributed
        same_data(ref, cfg.train.batch_size, 0)
        ref_losses, ref_grads = run(ref, steps)
        ref_state = final_state(ref)

        def err(a, b):
            return (a.double() - b.double()).abs().max().item()

        report = {
            "world": dp.world,
            "grads_are_views_of_flat_buffer": views,
            "loss": [m["loss"] for m in losses],
            "ref_loss": [m["loss"] for m in ref_losses],
            "grad_max_err": [
                max(err(g, r) for g, r in zip(gs, rs, strict=True))
                for gs, rs in zip(grads, ref_grads, strict=True)
            ],
            "grad_max_abs": [max(r.abs().max().item() for r in rs) for rs in ref_grads],
            "ranks_bit_identical": {
                k: all(torch.equal(s[k], per_rank[0][k]) for s in per_rank[1:]) for k in state
            },
            "state_max_err": {k: err(state[k], ref_state[k]) for k in state},
        }
        with open(out_path, "w") as f:
            json.dump(report, f, indent=1)
        return 0
    finally:
        dp.close()


if __name__ == "__main__":
    sys.exit(main())
