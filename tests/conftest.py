"""Shared test setup.

No machine here has a GPU, so Triton kernels run under the interpreter. The variable must be
set before triton is first imported; set TRITON_INTERPRET=0 yourself to run the same parity
tests on a real GPU.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from hrm_fast import tolerances as tol  # noqa: E402

INTERPRET = os.environ["TRITON_INTERPRET"] == "1"


def kernel_device() -> str:
    """Where parity tests run the Triton launchers: CPU tensors under the interpreter."""
    if INTERPRET:
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("TRITON_INTERPRET=0 needs a CUDA GPU")
    return "cuda"


def assert_close(actual, expected, atol, rtol, name="tensor"):
    """torch.testing-style check that reports how many elements mismatch and where."""
    actual = actual.detach().to(torch.float64).cpu()
    expected = expected.detach().to(torch.float64).cpu()
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    nonfinite = ~torch.isfinite(actual)
    if nonfinite.any():
        idx = nonfinite.nonzero()[:5].tolist()
        raise AssertionError(f"{name}: {int(nonfinite.sum())} non-finite elements, first at {idx}")
    err = (actual - expected).abs()
    bad = err > atol + rtol * expected.abs()
    if bad.any():
        n = int(bad.sum())
        where = bad.nonzero()[:5].tolist()
        worst = int(err.flatten().argmax())
        raise AssertionError(
            f"{name}: {n}/{actual.numel()} elements mismatch (atol={atol}, rtol={rtol}); "
            f"first at {where}; max abs err {err.max().item():.3e} at flat index {worst} "
            f"(got {actual.flatten()[worst].item():.6g}, "
            f"want {expected.flatten()[worst].item():.6g})"
        )


def max_err(actual, expected) -> float:
    return (actual.detach().double().cpu() - expected.detach().double().cpu()).abs().max().item()


def step_metrics(cfg, steps):
    """Train ``steps`` steps in process; returns the trainer and each step's metrics."""
    from hrm_fast.train import Trainer

    trainer = Trainer(cfg, quiet=True)
    out = []
    for _ in range(steps):
        trainer.step()
        out.append(trainer.read_metrics())
    return trainer, out


def logged_losses(run_dir):
    """(step, loss) of every train record in a run's metrics.jsonl."""
    import json

    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if r["event"] == "train"]


def assert_fused_step_matches_reference(cfg, steps, loss_keys):
    """Train ``steps`` fp32 steps on the reference and on the fused backend (the Triton
    kernels, interpreted on CPU tensors unless TRITON_INTERPRET=0): losses agree to 1e-4
    relative and weights to 1e-5 (hrm_fast.tolerances, which the start-up self-check
    shares). Returns both trainers for further checks."""
    import contextlib

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


def assert_official_train_grads_match(ours, theirs, out_ours, out_theirs):
    """Backpropagate one loss over logits and halting logits through a port of ours and the
    official model; every parameter's gradient, and the puzzle embedding's scratch rows', match
    in float64."""

    def loss(out):
        return out["logits"].square().mean() + out["q_halt_logits"].sum() * 0.1

    loss(out_ours).backward()
    loss(out_theirs).backward()
    grads_theirs = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        assert_close(p.grad, grads_theirs[name].grad, 1e-9, 1e-7, f"grad {name}")
    if hasattr(ours.inner, "puzzle_emb"):  # the sparse embedding's gradient: scratch rows
        lw_o, lw_t = ours.inner.puzzle_emb.local_weights, theirs.inner.puzzle_emb.local_weights
        assert_close(lw_o.grad, lw_t.grad, 1e-9, 1e-7, "puzzle local_weights grad")


def write_tiny_tasks(root, n_tasks: int = 3, seed: int = 0, max_side: int = 5):
    """A directory of small ARC-format tasks (grids <= max_side), for fast end-to-end tests."""
    import json
    import pathlib
    import random

    rng = random.Random(seed)
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)

    def grid():
        h, w = rng.randint(1, max_side), rng.randint(1, max_side)
        return [[rng.randint(0, 9) for _ in range(w)] for _ in range(h)]

    for t in range(n_tasks):
        pairs = []
        for _ in range(3):
            g = grid()
            pairs.append({"input": g, "output": [row[::-1] for row in g]})  # mirror task
        task = {"train": pairs[:2], "test": pairs[2:]}
        (root / f"task{t:02d}.json").write_text(json.dumps(task))
    return root


@pytest.fixture
def tiny_tasks(tmp_path):
    return write_tiny_tasks(tmp_path / "tasks")


@pytest.fixture
def debug_cfg(tiny_tasks):
    from hrm_fast.config import from_name

    cfg = from_name("debug")
    cfg.data.source = str(tiny_tasks)
    cfg.data.canvas = 8
    return cfg


@pytest.fixture
def inductor_eager_random():
    """Inductor draws random numbers with eager's generator, so a compiled step sees the same
    batches and exploration draws as the eager one. ``config.patch``, not monkeypatch: undoing a
    monkeypatch on inductor's config module deletes the option for every later test."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        yield
