"""Numerical comparison for parity tests: where kernels run, and closeness with a useful report."""

import os

import pytest
import torch

# tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported unless the caller set it.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


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
