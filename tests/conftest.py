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
            f"(got {actual.flatten()[worst].item():.6g}, want {expected.flatten()[worst].item():.6g})"
        )


def max_err(actual, expected) -> float:
    return (actual.detach().double().cpu() - expected.detach().double().cpu()).abs().max().item()
