"""Training steps in process: per-step metrics, logged losses, fused step vs reference step."""

import contextlib
import json

import pytest

from hrm_fast import tolerances as tol
from tests.support.parity import assert_close, kernel_device


def step_metrics(cfg, steps):
    """Train ``steps`` steps in process; returns the trainer and each step's metrics."""
    from hrm_fast.trainer.step import Trainer

    trainer = Trainer(cfg)
    out = []
    for _ in range(steps):
        trainer.step()
        out.append(trainer.read_metrics())
    return trainer, out


def logged_losses(run_dir):
    """(step, loss) of every train record in a run's metrics.jsonl."""
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if r["event"] == "train"]


def straight_and_resumed(cfg, tmp_path, steps: int, split_at: int):
    """Train ``steps`` steps in one run, and in a second run stopped after ``split_at`` and
    resumed to ``steps``; returns both run directories (for bit-exact resume checks)."""
    from hrm_fast.trainer.loop import train

    straight, split = tmp_path / "straight", tmp_path / "split"
    cfg.train.steps = steps
    assert train(cfg, straight, quiet=True) == 0
    cfg.train.steps = split_at
    assert train(cfg, split, quiet=True) == 0
    cfg.train.steps = steps
    assert train(cfg, split, resume=True, quiet=True) == 0
    return straight, split


def assert_fused_step_matches_reference(cfg, steps, loss_keys):
    """Train ``steps`` fp32 steps on the reference and on the fused backend (the Triton
    kernels, interpreted on CPU tensors unless TRITON_INTERPRET=0): losses agree to 1e-4
    relative and weights to 1e-5 (hrm_fast.tolerances, which the start-up self-check
    shares). Returns both trainers for further checks."""
    from hrm_fast.kernels.dispatch import triton_on_cpu

    device = kernel_device()
    cfg.train.device, cfg.train.dtype = device, "fp32"
    cfg.train.backend = "reference"
    ref_trainer, ref = step_metrics(cfg, steps)
    cfg.train.backend = "fused"
    with triton_on_cpu() if device == "cpu" else contextlib.nullcontext():
        fused_trainer, fused = step_metrics(cfg, steps)
    for step, (r, f) in enumerate(zip(ref, fused, strict=True)):
        for k in loss_keys:
            assert f[k] == pytest.approx(r[k], rel=tol.STEP_LOSS_REL, abs=tol.STEP_LOSS_ABS), (
                step,
                k,
            )
    ref_params = dict(ref_trainer.model.named_parameters())
    for name, p in fused_trainer.model.named_parameters():
        assert_close(p, ref_params[name], *tol.STEP_WEIGHTS, name=name)
    return ref_trainer, fused_trainer
