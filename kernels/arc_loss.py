"""Fused ARC loss statistics: one Triton pass over the logits for every per-example sum.

The ARC loss (``hrm_fast.loss``) only needs, per example b, the CE sum, the valid count, the
correct count and four [C] histograms (soft ``sum softmax``, sharpened ``sum softmax(x / T)``,
labels, argmax): ``ArcStats``. ``arc_loss_stats_ref`` defines them in eager torch; the forward
kernel computes all of them in one read of ``logits[B, S, V]`` (V = 12 padded to a 16-wide
tile); grid = (example, token block), each program writes its own partial row and torch sums
the partials, so the result is deterministic (no atomics). The loss's remaining [B] / [B, C]
math (``hrm_fast.loss.arc_loss_from_stats``) hands the backward kernel, through autograd,
``g_ce[b] = dL/dce_sum[b]``, ``g_p[b, c] = dL/dp_sum[b, c]`` and ``g_q[b, c] = dL/dq_sum[b, c]``,
and one more pass writes (p = softmax(x), q = softmax(x / T), valid positions)

    dlogits = g_ce[b] * dCE/dx + p * (g_p[b] - <g_p[b], p>) + q * (g_q[b] - <g_q[b], q>) / T

in the logits' dtype (0 at ignored positions). No host sync anywhere.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import MEMORY_BOUND_WARPS
from .aot import AotSpec, LaunchShape
from .dispatch import use_triton

IGNORE = -100


# --- HRM's stablemax (models/losses.py) ---------------------------------------------------


def s(x: torch.Tensor, epsilon: float = 1e-30) -> torch.Tensor:
    return torch.where(x < 0, 1 / (1 - x + epsilon), x + 1)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s_x = s(x)
    return torch.log(s_x / torch.sum(s_x, dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position CE under stablemax in float64 (HRM); 0 at ignored positions."""
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    valid = labels != IGNORE
    idx = torch.where(valid, labels, 0).to(torch.long).unsqueeze(-1)
    pred = torch.gather(logprobs, index=idx, dim=-1).squeeze(-1)
    return -torch.where(valid, pred, 0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position softmax CE in float32 (float64 stays float64); 0 at ignored positions."""
    dt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    V = logits.shape[-1]
    ce = F.cross_entropy(
        logits.to(dt).reshape(-1, V),
        labels.to(torch.long).reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    )
    return ce.view(labels.shape)


# --- per-example statistics ---------------------------------------------------------------


class ArcStats(NamedTuple):
    ce_sum: torch.Tensor  # [B] float: sum of CE over valid positions
    n_valid: torch.Tensor  # [B] int32
    correct: torch.Tensor  # [B] int32: valid positions with argmax == label
    p_sum: torch.Tensor  # [B, C] float: sum of softmax over valid positions
    q_sum: torch.Tensor  # [B, C] float: sum of softmax(logits / div_temperature), valid positions
    y_sum: torch.Tensor  # [B, C] int32: label counts
    a_sum: torch.Tensor  # [B, C] int32: argmax counts over valid positions


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def arc_loss_stats_ref(
    logits: torch.Tensor, labels: torch.Tensor, stablemax: bool, div_temperature: float = 1.0
) -> ArcStats:
    """The one pass over the logits, in eager torch (what the fused kernel computes)."""
    dt = compute_dtype(logits)
    V = logits.shape[-1]
    x = logits.to(dt)
    valid = labels != IGNORE
    vf = valid.to(dt)
    if stablemax:
        ce = stablemax_cross_entropy(logits, labels)
    else:
        ce = softmax_cross_entropy(logits, labels)
    ce_sum = ce.sum(-1).to(dt)
    p_sum = (torch.softmax(x, dim=-1) * vf.unsqueeze(-1)).sum(1)
    q_sum = (torch.softmax(x / div_temperature, dim=-1) * vf.unsqueeze(-1)).sum(1)
    y_oh = F.one_hot(torch.where(valid, labels, 0).to(torch.long), V) * valid.unsqueeze(-1)
    am = x.argmax(-1)
    a_oh = F.one_hot(am, V) * valid.unsqueeze(-1)
    correct = ((am == labels.to(torch.long)) & valid).sum(-1)
    i32 = torch.int32
    return ArcStats(
        ce_sum,
        valid.sum(-1).to(i32),
        correct.to(i32),
        p_sum,
        q_sum,
        y_oh.sum(1).to(i32),
        a_oh.sum(1).to(i32),
    )


# --- Triton kernels -----------------------------------------------------------------------

BLOCK_S = 64  # tokens per program: seed B=20, S=900 -> 300 programs
NUM_WARPS = MEMORY_BOUND_WARPS


@triton.jit
def _row_terms(x, lab, cols, inv_t, V: tl.constexpr, STABLEMAX: tl.constexpr):
    """Per-row softmax, sharpened softmax (x / T), CE and its gradient pieces for a
    [BLOCK_S, BLOCK_V] fp32 tile."""
    cmask = cols[None, :] < V
    x = tl.where(cmask, x, float("-inf"))
    m = tl.max(x, 1)
    e = tl.exp(x - m[:, None])  # padding columns -> 0
    z = tl.sum(e, 1)
    p = e / z[:, None]
    e_q = tl.exp((x - m[:, None]) * inv_t)  # T > 0: the same row max
    q = e_q / tl.sum(e_q, 1)[:, None]
    onehot = cols[None, :] == lab[:, None]  # IGNORE never matches
    x_y = tl.sum(tl.where(onehot, x, 0.0), 1)
    if STABLEMAX:
        # HRM: s(x) = 1 / (1 - x + 1e-30) for x < 0, x + 1 otherwise; CE = log sum s - log s_y.
        sx = tl.where(x < 0, 1.0 / (1.0 - x + 1e-30), x + 1.0)
        sx = tl.where(cmask, sx, 0.0)
        ssum = tl.sum(sx, 1)
        s_y = tl.where(x_y < 0, 1.0 / (1.0 - x_y + 1e-30), x_y + 1.0)
        ce = tl.log(ssum) - tl.log(s_y)
    else:
        ce = tl.log(z) + m - x_y
    return x, p, q, onehot, ce


@triton.jit
def _arc_loss_stats_fwd_kernel(
    logits_ptr,  # [B, S, V]
    labels_ptr,  # [B, S] int32
    ce_ptr,  # [B, NB] fp32 partial CE sums
    cnt_ptr,  # [B, NB, 2] int32 partial (valid, correct)
    p_ptr,  # [B, NB, V] fp32 partial soft histogram
    q_ptr,  # [B, NB, V] fp32 partial sharpened histogram
    y_ptr,  # [B, NB, V] int32 partial label histogram
    a_ptr,  # [B, NB, V] int32 partial argmax histogram
    S,
    NB,
    inv_t,  # 1 / div_temperature
    V: tl.constexpr,
    STABLEMAX: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    b = tl.program_id(0)
    blk = tl.program_id(1)
    rows = blk * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = tl.arange(0, BLOCK_V)
    rmask = rows < S
    tok = b.to(tl.int64) * S + rows
    lab = tl.load(labels_ptr + tok, mask=rmask, other=-100)
    valid = lab != -100
    x = tl.load(
        logits_ptr + tok[:, None] * V + cols[None, :],
        mask=rmask[:, None] & (cols[None, :] < V),
        other=0.0,
    ).to(tl.float32)
    x, p, q, onehot, ce = _row_terms(x, lab, cols, inv_t, V, STABLEMAX)

    am = tl.argmax(x, 1, tie_break_left=True)  # first maximum, as torch.argmax
    vcol = valid[:, None]
    ce_part = tl.sum(tl.where(valid, ce, 0.0), 0)
    n_part = tl.sum(valid.to(tl.int32), 0)
    c_part = tl.sum(((am == lab) & valid).to(tl.int32), 0)
    p_part = tl.sum(tl.where(vcol, p, 0.0), 0)
    q_part = tl.sum(tl.where(vcol, q, 0.0), 0)
    y_part = tl.sum(onehot.to(tl.int32), 0)
    a_part = tl.sum(((cols[None, :] == am[:, None]) & vcol).to(tl.int32), 0)

    part = b.to(tl.int64) * NB + blk
    cm = cols < V
    tl.store(ce_ptr + part, ce_part)
    tl.store(cnt_ptr + part * 2, n_part)
    tl.store(cnt_ptr + part * 2 + 1, c_part)
    tl.store(p_ptr + part * V + cols, p_part, mask=cm)
    tl.store(q_ptr + part * V + cols, q_part, mask=cm)
    tl.store(y_ptr + part * V + cols, y_part, mask=cm)
    tl.store(a_ptr + part * V + cols, a_part, mask=cm)


@triton.jit
def _arc_loss_stats_bwd_kernel(
    logits_ptr,  # [B, S, V]
    labels_ptr,  # [B, S] int32
    gce_ptr,  # [B] fp32: dL/dce_sum
    gp_ptr,  # [B, V] fp32: dL/dp_sum
    gq_ptr,  # [B, V] fp32: dL/dq_sum
    dx_ptr,  # [B, S, V] out, logits' dtype
    S,
    inv_t,  # 1 / div_temperature
    V: tl.constexpr,
    STABLEMAX: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    b = tl.program_id(0)
    blk = tl.program_id(1)
    rows = blk * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = tl.arange(0, BLOCK_V)
    rmask = rows < S
    cm = cols < V
    tok = b.to(tl.int64) * S + rows
    lab = tl.load(labels_ptr + tok, mask=rmask, other=-100)
    valid = lab != -100
    offs = tok[:, None] * V + cols[None, :]
    mask2 = rmask[:, None] & cm[None, :]
    x = tl.load(logits_ptr + offs, mask=mask2, other=0.0).to(tl.float32)
    x, p, q, onehot, ce = _row_terms(x, lab, cols, inv_t, V, STABLEMAX)
    g_ce = tl.load(gce_ptr + b)
    g_p = tl.load(gp_ptr + b * V + cols, mask=cm, other=0.0)
    g_q = tl.load(gq_ptr + b * V + cols, mask=cm, other=0.0)

    if STABLEMAX:
        # d/dx_c [log sum s - log s_y] = s'(x_c) / sum s - [c = y] s'(x_y) / s(x_y),
        # s'(x) = s(x)^2 for x < 0 (exactly, including the 1e-30), 1 otherwise.
        sx = tl.where(x < 0, 1.0 / (1.0 - x + 1e-30), x + 1.0)
        sx = tl.where(cm[None, :], sx, 0.0)
        ds = tl.where(x < 0, sx * sx, 1.0)
        ssum = tl.sum(sx, 1)
        dce = ds / ssum[:, None] - tl.where(onehot, ds / tl.where(onehot, sx, 1.0), 0.0)
    else:
        dce = p - onehot.to(tl.float32)
    dp = p * (g_p[None, :] - tl.sum(p * g_p[None, :], 1)[:, None])
    dq = q * (g_q[None, :] - tl.sum(q * g_q[None, :], 1)[:, None]) * inv_t
    dx = tl.where(valid[:, None] & cm[None, :], g_ce * dce + dp + dq, 0.0)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask2)


# --- launchers (any device: CPU tensors run under TRITON_INTERPRET=1) ----------------------


def _num_blocks(S: int) -> int:
    return triton.cdiv(S, BLOCK_S)


def _alloc_stats_partials(B: int, S: int, V: int, device) -> tuple[torch.Tensor, ...]:
    """Per-(example, token block) partial buffers the forward kernel fills completely."""
    NB = _num_blocks(S)
    f32, i32 = torch.float32, torch.int32
    return (
        torch.empty(B, NB, dtype=f32, device=device),
        torch.empty(B, NB, 2, dtype=i32, device=device),
        torch.empty(B, NB, V, dtype=f32, device=device),
        torch.empty(B, NB, V, dtype=f32, device=device),
        torch.empty(B, NB, V, dtype=i32, device=device),
        torch.empty(B, NB, V, dtype=i32, device=device),
    )


def _arc_loss_stats_fwd(
    logits: torch.Tensor,
    labels: torch.Tensor,
    stablemax: bool,
    div_temperature: float = 1.0,
    out=None,
) -> ArcStats:
    """Per-example statistics (fp32 sums, int32 counts). ``out``: partial buffers to fill."""
    B, S, V = logits.shape
    assert labels.shape == (B, S) and labels.dtype == torch.int32
    logits = logits.contiguous()
    labels = labels.contiguous()
    parts = _alloc_stats_partials(B, S, V, logits.device) if out is None else out
    ce_p, cnt_p, p_p, q_p, y_p, a_p = parts
    torch.library.wrap_triton(_arc_loss_stats_fwd_kernel)[(B, _num_blocks(S))](
        logits, labels, ce_p, cnt_p, p_p, q_p, y_p, a_p, S, _num_blocks(S), 1.0 / div_temperature,
        V=V, STABLEMAX=stablemax, BLOCK_S=BLOCK_S, BLOCK_V=triton.next_power_of_2(V),
        num_warps=NUM_WARPS,
    )  # fmt: skip
    # Fixed-order reductions over the (few) blocks: deterministic.
    cnt = cnt_p.sum(1, dtype=torch.int32)
    return ArcStats(
        ce_p.sum(1),
        cnt[:, 0].clone(),  # clones: op outputs must not alias each other
        cnt[:, 1].clone(),
        p_p.sum(1),
        q_p.sum(1),
        y_p.sum(1, dtype=torch.int32),
        a_p.sum(1, dtype=torch.int32),
    )


def _arc_loss_stats_bwd(
    logits: torch.Tensor,
    labels: torch.Tensor,
    g_ce: torch.Tensor,
    g_p: torch.Tensor,
    g_q: torch.Tensor,
    stablemax: bool,
    div_temperature: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """dL/dlogits from g_ce = dL/dce_sum [B], g_p = dL/dp_sum and g_q = dL/dq_sum [B, V]."""
    B, S, V = logits.shape
    logits = logits.contiguous()
    labels = labels.contiguous()
    g_ce = g_ce.to(torch.float32).contiguous()
    g_p = g_p.to(torch.float32).contiguous()
    g_q = g_q.to(torch.float32).contiguous()
    dx = torch.empty_like(logits) if out is None else out
    torch.library.wrap_triton(_arc_loss_stats_bwd_kernel)[(B, _num_blocks(S))](
        logits, labels, g_ce, g_p, g_q, dx, S, 1.0 / div_temperature,
        V=V, STABLEMAX=stablemax, BLOCK_S=BLOCK_S, BLOCK_V=triton.next_power_of_2(V),
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return dx


# --- torch.library registration -----------------------------------------------------------


@torch.library.triton_op("hrm_fast::arc_loss_stats", mutates_args=())
def _arc_loss_stats_op(
    logits: torch.Tensor, labels: torch.Tensor, stablemax: bool, div_temperature: float
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]:
    return tuple(_arc_loss_stats_fwd(logits, labels, stablemax, div_temperature))


@torch.library.triton_op("hrm_fast::arc_loss_stats_bwd", mutates_args=())
def _arc_loss_stats_bwd_op(
    logits: torch.Tensor,
    labels: torch.Tensor,
    g_ce: torch.Tensor,
    g_p: torch.Tensor,
    g_q: torch.Tensor,
    stablemax: bool,
    div_temperature: float,
) -> torch.Tensor:
    return _arc_loss_stats_bwd(logits, labels, g_ce, g_p, g_q, stablemax, div_temperature)


def _setup_context(ctx, inputs, output):
    logits, labels, stablemax, div_temperature = inputs
    ctx.save_for_backward(logits, labels)
    ctx.stablemax = stablemax
    ctx.div_temperature = div_temperature


def _backward(ctx, g_ce, g_n, g_corr, g_p, g_q, g_y, g_a):
    # Counts and integer histograms are piecewise constant: only ce_sum, p_sum and q_sum
    # carry grads.
    logits, labels = ctx.saved_tensors
    B, _, V = logits.shape
    if g_ce is None:
        g_ce = logits.new_zeros(B, dtype=torch.float32)
    if g_p is None:
        g_p = logits.new_zeros(B, V, dtype=torch.float32)
    if g_q is None:
        g_q = logits.new_zeros(B, V, dtype=torch.float32)
    dx = torch.ops.hrm_fast.arc_loss_stats_bwd(
        logits, labels, g_ce, g_p, g_q, ctx.stablemax, ctx.div_temperature
    )
    return dx, None, None, None


torch.library.register_autograd("hrm_fast::arc_loss_stats", _backward, setup_context=_setup_context)


# --- public API ---------------------------------------------------------------------------


def arc_loss_stats(
    logits: torch.Tensor, labels: torch.Tensor, stablemax: bool, div_temperature: float = 1.0
) -> ArcStats:
    if use_triton(logits):
        stats = torch.ops.hrm_fast.arc_loss_stats(logits, labels, stablemax, div_temperature)
        return ArcStats(*stats)
    return arc_loss_stats_ref(logits, labels, stablemax, div_temperature)


# --- AOT compile specs --------------------------------------------------------------------


def aot_specs(shape: LaunchShape, target: str = "nvidia") -> list[AotSpec]:
    # One launch configuration for every target family (kernels-report: no spills on any).
    del target
    B, S, V = shape.batch, shape.grid_len, shape.vocab  # the loss sees the canvas only
    NB = _num_blocks(S)
    fwd_sig = {
        "logits_ptr": "*bf16", "labels_ptr": "*i32", "ce_ptr": "*fp32", "cnt_ptr": "*i32",
        "p_ptr": "*fp32", "q_ptr": "*fp32", "y_ptr": "*i32", "a_ptr": "*i32", "S": "i32",
        "NB": "i32", "inv_t": "fp32",
        "V": "constexpr", "STABLEMAX": "constexpr", "BLOCK_S": "constexpr", "BLOCK_V": "constexpr",
    }  # fmt: skip
    bwd_sig = {
        "logits_ptr": "*bf16", "labels_ptr": "*i32", "gce_ptr": "*fp32", "gp_ptr": "*fp32",
        "gq_ptr": "*fp32", "dx_ptr": "*bf16", "S": "i32", "inv_t": "fp32",
        "V": "constexpr", "STABLEMAX": "constexpr", "BLOCK_S": "constexpr", "BLOCK_V": "constexpr",
    }  # fmt: skip
    specs = []
    note = f"B={B} S={S} V={V} bf16 logits"
    for stablemax in (False, True):
        tag = "stablemax" if stablemax else "softmax"
        const = {"V": V, "STABLEMAX": stablemax, "BLOCK_S": BLOCK_S, "BLOCK_V": 16}
        specs.append(
            AotSpec(
                name=f"arc_loss_stats_fwd_{tag}", fn=_arc_loss_stats_fwd_kernel,
                signature=fwd_sig, constexprs=const, num_warps=NUM_WARPS, num_stages=1,
                grid=(B, NB), note=note,
            )
        )  # fmt: skip
        specs.append(
            AotSpec(
                name=f"arc_loss_stats_bwd_{tag}", fn=_arc_loss_stats_bwd_kernel,
                signature=bwd_sig, constexprs=const, num_warps=NUM_WARPS, num_stages=1,
                grid=(B, NB), note=note,
            )
        )  # fmt: skip
    return specs


__all__ = [
    "IGNORE",
    "aot_specs",
    "arc_loss_stats",
    "_arc_loss_stats_fwd",
    "_arc_loss_stats_bwd",
]
