"""SwiGLU activation between HRM's gate_up_proj and down_proj.

    gate, up = gate_up.chunk(2, -1);  out = silu(gate) * up

Eager PyTorch makes two strided views (chunk), a silu output tensor and a product tensor, and
its backward writes d_gate and d_up separately before a cat (or a strided copy) into the
[..., 2I] gradient of the projection output. Here the forward reads gate_up once and writes
out once; the backward reads dy and gate_up once and writes d_gate_up [..., 2I] once,
recomputing sigmoid instead of saving silu(gate) (saving it would cost a [..., I] tensor).
Math is fp32; storage is the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import MEMORY_BOUND_WARPS, rows_per_program
from .aot import AotSpec, LaunchShape
from .dispatch import use_triton

# --------------------------------------------------------------------------------------------
# Triton kernels: a [BLOCK_M rows, BLOCK_I columns] tile of the [M, I] output per program
# --------------------------------------------------------------------------------------------


@triton.jit
def _swiglu_fwd_kernel(
    GU, OUT, M,
    I: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask = (rows < M)[:, None] & (cols < I)[None, :]
    # int64: M * 2I exceeds int32 at the paper shape (768*901 rows x 3072).
    rows64 = rows.to(tl.int64)[:, None]
    g_offs = rows64 * (2 * I) + cols[None, :]
    g = tl.load(GU + g_offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + g_offs + I, mask=mask, other=0.0).to(tl.float32)
    out = g * tl.sigmoid(g) * u
    tl.store(OUT + rows64 * I + cols[None, :], out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(
    DY, GU, DGU, M,
    I: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask = (rows < M)[:, None] & (cols < I)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    g_offs = rows64 * (2 * I) + cols[None, :]
    dy = tl.load(DY + rows64 * I + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    g = tl.load(GU + g_offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + g_offs + I, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    silu = g * sig
    # silu'(g) = sig * (1 + g * (1 - sig))
    d_gate = dy * u * sig * (1.0 + g * (1.0 - sig))
    d_up = dy * silu
    tl.store(DGU + g_offs, d_gate.to(DGU.dtype.element_ty), mask=mask)
    tl.store(DGU + g_offs + I, d_up.to(DGU.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# Launch configuration (fixed heuristic; elementwise and memory bound)
# --------------------------------------------------------------------------------------------


def _config(I: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_I, num_warps): 2K output elements per program, columns in 256-chunks
    (768 and 1536 are multiples of 256, so only odd test widths are masked)."""
    block_i = min(triton.next_power_of_2(I), 256)
    return rows_per_program(block_i), block_i, MEMORY_BOUND_WARPS


# --------------------------------------------------------------------------------------------
# Launchers (any device: CPU tensors run under TRITON_INTERPRET=1)
# --------------------------------------------------------------------------------------------


def _swiglu_fwd(gate_up, out=None, launch=None):
    """silu(gate_up[..., :I]) * gate_up[..., I:] -> [..., I] in gate_up's dtype."""
    two_i = gate_up.shape[-1]
    assert two_i % 2 == 0, f"gate_up last dim must be even, got {two_i}"
    I = two_i // 2
    gate_up = gate_up.contiguous()
    M = gate_up.numel() // two_i if two_i else 0
    if out is None:
        out = torch.empty(*gate_up.shape[:-1], I, device=gate_up.device, dtype=gate_up.dtype)
    block_m, block_i, warps = _config(I)
    grid = (triton.cdiv(M, block_m), triton.cdiv(I, block_i))
    k = launch(_swiglu_fwd_kernel) if launch else _swiglu_fwd_kernel
    k[grid](gate_up, out, M, I=I, BLOCK_M=block_m, BLOCK_I=block_i, num_warps=warps)
    return out


def _swiglu_bwd(dy, gate_up, dgate_up=None, launch=None):
    """d_gate_up [..., 2I] from dy [..., I], recomputing silu from gate_up."""
    two_i = gate_up.shape[-1]
    I = two_i // 2
    assert dy.shape[-1] == I and dy.shape[:-1] == gate_up.shape[:-1], (dy.shape, gate_up.shape)
    dy = dy.contiguous()
    gate_up = gate_up.contiguous()
    M = gate_up.numel() // two_i if two_i else 0
    if dgate_up is None:
        dgate_up = torch.empty_like(gate_up)
    block_m, block_i, warps = _config(I)
    grid = (triton.cdiv(M, block_m), triton.cdiv(I, block_i))
    k = launch(_swiglu_bwd_kernel) if launch else _swiglu_bwd_kernel
    k[grid](dy, gate_up, dgate_up, M, I=I, BLOCK_M=block_m, BLOCK_I=block_i, num_warps=warps)
    return dgate_up


# --------------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------------


@torch.library.triton_op("hrm_fast::swiglu", mutates_args=())
def _swiglu_op(gate_up: torch.Tensor) -> torch.Tensor:
    return _swiglu_fwd(gate_up, launch=torch.library.wrap_triton)


@torch.library.triton_op("hrm_fast::swiglu_bwd", mutates_args=())
def _swiglu_bwd_op(dy: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    return _swiglu_bwd(dy, gate_up, launch=torch.library.wrap_triton)


def _swiglu_setup(ctx, inputs, output):
    (gate_up,) = inputs
    ctx.save_for_backward(gate_up)


def _swiglu_backward(ctx, dy):
    (gate_up,) = ctx.saved_tensors
    return torch.ops.hrm_fast.swiglu_bwd(dy, gate_up)


torch.library.register_autograd("hrm_fast::swiglu", _swiglu_backward, setup_context=_swiglu_setup)


# --------------------------------------------------------------------------------------------
# Eager reference and public function
# --------------------------------------------------------------------------------------------


def swiglu_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """fp32 math (float64 for float64 input), output in gate_up's dtype."""
    gate, up = gate_up.chunk(2, -1)
    if gate_up.dtype != torch.float64:
        gate, up = gate.float(), up.float()
    return (torch.nn.functional.silu(gate) * up).to(gate_up.dtype)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up with gate, up = gate_up.chunk(2, -1)."""
    if use_triton(gate_up):
        return torch.ops.hrm_fast.swiglu(gate_up)
    return swiglu_ref(gate_up)


# --------------------------------------------------------------------------------------------
# Ahead-of-time compile specs
# --------------------------------------------------------------------------------------------


def aot_specs(shape: LaunchShape, target: str = "nvidia") -> list[AotSpec]:
    """Launch configs at the trainer's shapes (bf16 activations)."""
    # One launch configuration for every target family (kernels-report: no spills on any).
    del target
    B, S, I = shape.batch, shape.seq_len, shape.intermediate
    rows, note = B * S, f"rows=B*S={B}*{S} I={I} bf16"
    block_m, block_i, warps = _config(I)
    consts = {"I": I, "BLOCK_M": block_m, "BLOCK_I": block_i}
    grid = (triton.cdiv(rows, block_m), triton.cdiv(I, block_i))
    fwd_sig = {
        "GU": "*bf16", "OUT": "*bf16", "M": "i32", "I": "constexpr",
        "BLOCK_M": "constexpr", "BLOCK_I": "constexpr",
    }  # fmt: skip
    bwd_sig = {
        "DY": "*bf16", "GU": "*bf16", "DGU": "*bf16", "M": "i32", "I": "constexpr",
        "BLOCK_M": "constexpr", "BLOCK_I": "constexpr",
    }  # fmt: skip
    return [
        AotSpec("swiglu_fwd", _swiglu_fwd_kernel, fwd_sig, consts, warps, 1, grid, note),
        AotSpec("swiglu_bwd", _swiglu_bwd_kernel, bwd_sig, consts, warps, 1, grid, note),
    ]
