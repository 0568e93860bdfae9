"""Residual add + weightless RMSNorm (HRM's post-norm block epilogue) and the injection add.

HRM block (post-norm, no norm weights):
    h = rms_norm(h + attn(h));  h = rms_norm(h + mlp(h))
    rms_norm(x) = (x32 * rsqrt(mean(x32^2, -1) + eps)).to(x.dtype),  x32 = x.float()
and each reasoning module starts with the input-injection add
    L: z_L + (z_H + input_embeddings)      H: z_H + z_L

Kernels:
* ``add_rms_norm(x, r, eps)``: one read of x and r, one write of y (+ 4 bytes/row of rstd).
  The residual sum is kept in fp32 registers and never written (eager writes it in the input
  dtype and then reads it back three times through the float casts).
* Backward saves ``y`` and ``rstd`` rather than ``x + r``. ``y`` is the block output, which the
  next layer's matmul (qkv_proj / gate_up_proj) and residual already keep alive, so the only
  extra saved memory is rstd (fp32, one per row). Since y = s * rstd exactly (up to the output
  rounding), ds = rstd * (dy - y * mean(dy * y)) needs no recompute of s. The cost is that the
  backward sees y rounded to the input dtype: a relative error of one output ulp in the
  projection term, the same order as eager's own rounding of x + r.
* dx = dr = ds: the backward op returns one tensor and autograd hands it to both inputs.
* ``add3(a, b, c)``: a + b + c in one pass (fp32 sum, one rounding); backward is the identity.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import ELEMENTS_PER_PROGRAM, MEMORY_BOUND_WARPS, rows_per_program
from .aot import AotSpec, LaunchShape
from .dispatch import use_triton

MAX_N = 1024


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _add_rms_norm_fwd_kernel(
    X, R, Y, RSTD, M, eps,
    N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_mask = rows < M
    mask = row_mask[:, None] & (cols[None, :] < N)
    # int64 row offsets: rows * N exceeds int32 at the paper shape for wide tensors.
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    s = x + r
    # Masked columns are 0, so the sum over BLOCK_N divided by N is the mean over N.
    ms = tl.sum(s * s, axis=1) / N
    rstd = 1.0 / tl.sqrt(ms + eps)
    y = s * rstd[:, None]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=row_mask)


@triton.jit
def _add_rms_norm_bwd_kernel(
    DY, Y, RSTD, DX, M,
    N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_mask = rows < M
    mask = row_mask[:, None] & (cols[None, :] < N)
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
    # d/ds of s * rstd(s): rstd * (dy - y * mean(dy * y)), with y = s * rstd.
    c = tl.sum(dy * y, axis=1) / N
    dx = rstd[:, None] * (dy - y * c[:, None])
    tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _add3_kernel(A, B, C, OUT, numel, HAS_C: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    s = tl.load(A + offs, mask=mask).to(tl.float32) + tl.load(B + offs, mask=mask).to(tl.float32)
    if HAS_C:
        s += tl.load(C + offs, mask=mask).to(tl.float32)
    tl.store(OUT + offs, s.to(OUT.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# Launch configuration (a fixed heuristic: the kernels are memory bound and shape-static)
# --------------------------------------------------------------------------------------------


def _norm_config(N: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): whole rows per program, ~2K elements per program."""
    if N > MAX_N:
        raise ValueError(f"add_rms_norm supports hidden sizes up to {MAX_N}, got {N}")
    block_n = triton.next_power_of_2(N)
    return rows_per_program(block_n), block_n, MEMORY_BOUND_WARPS


ADD3_BLOCK = ELEMENTS_PER_PROGRAM
ADD3_WARPS = MEMORY_BOUND_WARPS


def _rows(t: torch.Tensor) -> int:
    return t.numel() // t.shape[-1] if t.shape[-1] else 0


# --------------------------------------------------------------------------------------------
# Launchers (any device: CPU tensors run under TRITON_INTERPRET=1)
# --------------------------------------------------------------------------------------------


def _add_rms_norm_fwd(x, r, eps=1e-5, out=None, rstd=None, launch=None):
    """y = rms_norm(x + r), rstd (fp32, one per row). Returns (y, rstd)."""
    assert x.shape == r.shape and x.dtype == r.dtype, (x.shape, r.shape, x.dtype, r.dtype)
    N = x.shape[-1]
    x = x.contiguous()
    r = r.contiguous()
    M = _rows(x)
    if out is None:
        out = torch.empty_like(x)
    if rstd is None:
        rstd = torch.empty(x.shape[:-1], device=x.device, dtype=torch.float32)
    block_m, block_n, warps = _norm_config(N)
    grid = (triton.cdiv(M, block_m),)
    k = launch(_add_rms_norm_fwd_kernel) if launch else _add_rms_norm_fwd_kernel
    k[grid](x, r, out, rstd, M, eps, N=N, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
    return out, rstd


def _add_rms_norm_bwd(dy, y, rstd, dx=None, launch=None):
    """dx = dr = rstd * (dy - y * mean(dy * y)). Returns dx (one tensor for both inputs)."""
    N = y.shape[-1]
    dy = dy.contiguous()
    y = y.contiguous()
    rstd = rstd.contiguous()
    M = _rows(y)
    if dx is None:
        dx = torch.empty_like(y)
    block_m, block_n, warps = _norm_config(N)
    grid = (triton.cdiv(M, block_m),)
    k = launch(_add_rms_norm_bwd_kernel) if launch else _add_rms_norm_bwd_kernel
    k[grid](dy, y, rstd, dx, M, N=N, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
    return dx


def _add3_fwd(a, b, c=None, out=None, launch=None):
    """a + b (+ c) summed in fp32, one rounding to a's dtype."""
    assert a.shape == b.shape and a.dtype == b.dtype
    if c is not None:
        assert c.shape == a.shape and c.dtype == a.dtype
    a = a.contiguous()
    b = b.contiguous()
    has_c = c is not None
    c = c.contiguous() if has_c else a  # dummy pointer when HAS_C is False
    if out is None:
        out = torch.empty_like(a)
    numel = a.numel()
    grid = (triton.cdiv(numel, ADD3_BLOCK),)
    k = launch(_add3_kernel) if launch else _add3_kernel
    k[grid](a, b, c, out, numel, HAS_C=has_c, BLOCK=ADD3_BLOCK, num_warps=ADD3_WARPS)
    return out


# --------------------------------------------------------------------------------------------
# torch.library registration (traceable by torch.compile, no graph breaks)
# --------------------------------------------------------------------------------------------


@torch.library.triton_op("hrm_fast::add_rms_norm", mutates_args=())
def _add_rms_norm_op(
    x: torch.Tensor, r: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _add_rms_norm_fwd(x, r, eps, launch=torch.library.wrap_triton)


@torch.library.triton_op("hrm_fast::add_rms_norm_bwd", mutates_args=())
def _add_rms_norm_bwd_op(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    return _add_rms_norm_bwd(dy, y, rstd, launch=torch.library.wrap_triton)


def _add_rms_norm_setup(ctx, inputs, output):
    y, rstd = output
    ctx.save_for_backward(y, rstd)
    ctx.mark_non_differentiable(rstd)


def _add_rms_norm_backward(ctx, dy, _drstd):
    y, rstd = ctx.saved_tensors
    dx = torch.ops.hrm_fast.add_rms_norm_bwd(dy, y, rstd)
    return dx, dx, None


torch.library.register_autograd(
    "hrm_fast::add_rms_norm", _add_rms_norm_backward, setup_context=_add_rms_norm_setup
)


@torch.library.triton_op("hrm_fast::add3", mutates_args=())
def _add3_op(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    return _add3_fwd(a, b, c, launch=torch.library.wrap_triton)


def _add3_setup(ctx, inputs, output):
    ctx.has_c = inputs[2] is not None


def _add3_backward(ctx, g):
    return g, g, (g if ctx.has_c else None)


torch.library.register_autograd("hrm_fast::add3", _add3_backward, setup_context=_add3_setup)


# --------------------------------------------------------------------------------------------
# Eager references (define the numerics; float64-capable)
# --------------------------------------------------------------------------------------------


def rms_norm_ref(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """HRM's weightless rms_norm: fp32 statistics (or float64 for float64 input)."""
    x32 = x.float() if x.dtype != torch.float64 else x
    y = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)
    return y.to(x.dtype)


def add_rms_norm_ref(x: torch.Tensor, r: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return rms_norm_ref(x + r, eps)


def add3_ref(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    # HRM's order: z_L + (z_H + input_embeddings).
    return a + (b + c) if c is not None else a + b


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


def add_rms_norm(x: torch.Tensor, r: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """rms_norm(x + r) (weightless, fp32 statistics, output in x's dtype)."""
    if use_triton(x):
        return torch.ops.hrm_fast.add_rms_norm(x, r, eps)[0]
    return add_rms_norm_ref(x, r, eps)


def add3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """a + b (+ c) in one pass: the input-injection add at the start of a reasoning module."""
    if use_triton(a):
        return torch.ops.hrm_fast.add3(a, b, c)
    return add3_ref(a, b, c)


# --------------------------------------------------------------------------------------------
# Ahead-of-time compile specs
# --------------------------------------------------------------------------------------------


def aot_specs(shape: LaunchShape, target: str = "nvidia") -> list[AotSpec]:
    """Launch configs at the trainer's shapes (bf16 activations)."""
    # One launch configuration for every target family (kernels-report: no spills on any).
    del target
    B, S, N = shape.batch, shape.seq_len, shape.hidden
    rows, note = B * S, f"B={B} S={S} hidden={N} bf16"
    block_m, block_n, warps = _norm_config(N)
    consts = {"N": N, "BLOCK_M": block_m, "BLOCK_N": block_n}
    grid = (triton.cdiv(rows, block_m),)
    fwd_sig = {
        "X": "*bf16", "R": "*bf16", "Y": "*bf16", "RSTD": "*fp32",
        "M": "i32", "eps": "fp32", "N": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
    }  # fmt: skip
    bwd_sig = {
        "DY": "*bf16", "Y": "*bf16", "RSTD": "*fp32", "DX": "*bf16",
        "M": "i32", "N": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
    }  # fmt: skip
    add3_sig = {
        "A": "*bf16", "B": "*bf16", "C": "*bf16", "OUT": "*bf16", "numel": "i32",
        "HAS_C": "constexpr", "BLOCK": "constexpr",
    }  # fmt: skip
    add3_grid = (triton.cdiv(rows * N, ADD3_BLOCK),)
    return [
        AotSpec(
            "add_rms_norm_fwd", _add_rms_norm_fwd_kernel, fwd_sig, consts, warps, 1, grid, note
        ),
        AotSpec(
            "add_rms_norm_bwd", _add_rms_norm_bwd_kernel, bwd_sig, consts, warps, 1, grid, note
        ),
        AotSpec(
            "add3",
            _add3_kernel,
            add3_sig,
            {"HAS_C": True, "BLOCK": ADD3_BLOCK},
            ADD3_WARPS,
            1,
            add3_grid,
            note + " (L-level: 3 inputs)",
        ),
        AotSpec(
            "add2",
            _add3_kernel,
            add3_sig,
            {"HAS_C": False, "BLOCK": ADD3_BLOCK},
            ADD3_WARPS,
            1,
            add3_grid,
            note + " (H-level: 2 inputs)",
        ),
    ]
