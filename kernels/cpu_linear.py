"""fp32 linear layers on AMD CPUs with AVX-512 through oneDNN instead of MKL's sgemm.

PyTorch sends fp32 CPU matmuls to MKL, which runs far below the machine's peak on AMD CPUs:
on the Zen 4 we measure on, oneDNN's fp32 inner product (``torch.ops.mkldnn._linear_pointwise``,
part of every x86 torch build) ran the training step's projections 2.1-2.5x faster
(docs/performance.md). Both are IEEE fp32 products with fp32 sums, in a different order; the
tests hold the result to the textbook bound of any fp32 dot product of length K.

The forward and the input gradient (dY W) go through oneDNN; the weight gradient stays
``torch.mm``. The choice is a rule (an AMD CPU with AVX-512 and oneDNN), not a timing, so a
resumed run makes the same choice on the same machine.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch.utils.flop_counter import register_flop_formula


@functools.cache
def status() -> tuple[bool, str]:
    """(use oneDNN for fp32 linear layers on this CPU, the reason in words)."""
    if not torch.backends.mkldnn.is_available():
        return False, "mkl (this torch has no oneDNN)"
    capability = torch.backends.cpu.get_cpu_capability()
    if "AVX512" not in capability:
        return False, f"mkl (no AVX-512: {capability})"
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False, "mkl (CPU vendor unknown)"
    if "AuthenticAMD" not in info:
        return False, "mkl (not an AMD CPU: MKL's own)"
    return True, "onednn (AMD CPU, AVX-512: oneDNN's fp32 inner product, not MKL's sgemm)"


def _onednn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


@torch.library.custom_op("hrm_fast::cpu_linear", mutates_args=())
def cpu_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ w[N, K]^T -> [M, N], fp32, through oneDNN."""
    return _onednn(x.contiguous(), w.contiguous())


@cpu_linear.register_fake
def _(x, w):
    return x.new_empty(x.shape[0], w.shape[0])


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    x, w = ctx.saved_tensors
    dx = torch.ops.hrm_fast.cpu_linear(grad, w.t()) if ctx.needs_input_grad[0] else None
    dw = grad.t() @ x if ctx.needs_input_grad[1] else None
    return dx, dw


cpu_linear.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.hrm_fast.cpu_linear)
def _flops(x, w, *args, **kwargs) -> int:  # as torch.utils.flop_counter counts aten.mm
    return 2 * x[0] * x[1] * w[0]


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """F.linear without bias for fp32 CPU tensors of any leading shape, through oneDNN."""
    lead = x.shape[:-1]
    out = torch.ops.hrm_fast.cpu_linear(x.reshape(-1, x.shape[-1]), w)
    return out.view(*lead, w.shape[0])
