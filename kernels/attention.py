"""Fused RoPE + non-causal multi-head attention (FlashAttention-2 style), forward and backward.

``rope_attention(qkv, cos, sin) -> out`` replaces HRM's ``apply_rotary_pos_emb`` + attention:

* ``qkv``: ``[B, S, 3H, D]``, the ``qkv_proj`` output viewed (q = heads ``[0, H)``,
  k = ``[H, 2H)``, v = ``[2H, 3H)``); any strides with unit stride on D are read in place.
* ``cos``, ``sin``: ``[S, D]`` fp32 from HRM's RotaryEmbedding (``rotate_half`` convention).
* returns ``[B, S, H, D]`` contiguous in qkv's dtype; scale ``1/sqrt(D)``.

RoPE is applied inside the kernels, in fp32 and rounded back to the input dtype exactly like
HRM's ``apply_rotary_pos_emb``. Splitting D into halves ``x = [x1, x2]`` turns
``x*cos + rotate_half(x)*sin`` into ``[x1*c1 - x2*s1, x2*c2 + x1*s2]`` and the scores into two
dots of width D/2, so no in-register concatenation is needed.

Backward (no atomics, deterministic): ``delta = rowsum(dO * O)``; a dk/dv kernel owns a K/V
block and loops over every Q block; a dq kernel owns a Q block and loops over every K block.
RoPE is recomputed on the fly and its transpose (``dx1 = dxe1*c1 + dxe2*s2``,
``dx2 = dxe2*c2 - dxe1*s1``) applied before storing ``dqkv`` ``[B, S, 3H, D]``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, MEMORY_BOUND_WARPS, rows_per_program
from .aot import AotSpec, LaunchShape
from .dispatch import device_target_family, use_triton
from .rope import apply_rope

_IN_INTERPRETER = tl.constexpr(INTERPRET)  # the same fact, readable inside @triton.jit code


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _opaque_tile(x, ON: tl.constexpr):
    """Identity that Triton's layout pass cannot look through (``ON``; AMD targets only).

    A streamed tile that feeds two dots (plain and transposed) is wanted in two WMMA operand
    layouts. Without a barrier, Triton re-computes everything that produced the tile (RoPE's
    four fp32 cos/sin tiles included) in each operand layout, which on RDNA3 holds every row
    in every lane of a half-wave; through this non-pure empty asm the tile is computed once
    and each copy is made through LDS. The interpreter skips the asm (it has no inline asm).
    """
    if ON and not _IN_INTERPRETER:
        if x.dtype.primitive_bitwidth == 16:
            bits = x.to(tl.int16, bitcast=True)
            bits = tl.inline_asm_elementwise(
                "", "=v,0", [bits], dtype=tl.int16, is_pure=False, pack=2
            )
        else:
            bits = x.to(tl.int32, bitcast=True)
            bits = tl.inline_asm_elementwise(
                "", "=v,0", [bits], dtype=tl.int32, is_pure=False, pack=1
            )
        x = bits.to(x.dtype, bitcast=True)
    return x


@triton.jit
def _rope_load(
    X, COS, SIN, offs_s, offs_d, row_mask, stride_s, stride_cs, HALF: tl.constexpr,
    OPAQUE: tl.constexpr = False,
):  # fmt: skip
    """Load rows ``offs_s`` of one head and return the rotated halves in the input dtype."""
    x_ptr = X + offs_s[:, None] * stride_s + offs_d[None, :]
    c_ptr = offs_s[:, None] * stride_cs + offs_d[None, :]
    m = row_mask[:, None]
    x1 = tl.load(x_ptr, mask=m, other=0.0)
    x2 = tl.load(x_ptr + HALF, mask=m, other=0.0)
    c1 = tl.load(COS + c_ptr, mask=m, other=0.0)
    c2 = tl.load(COS + c_ptr + HALF, mask=m, other=0.0)
    s1 = tl.load(SIN + c_ptr, mask=m, other=0.0)
    s2 = tl.load(SIN + c_ptr + HALF, mask=m, other=0.0)
    # HRM: q.to(cos.dtype) * cos + rotate_half(q) * sin, then .to(orig dtype).
    x1f = x1.to(tl.float32)
    x2f = x2.to(tl.float32)
    e1 = (x1f * c1 - x2f * s1).to(x1.dtype)
    e2 = (x2f * c2 + x1f * s2).to(x1.dtype)
    return _opaque_tile(e1, OPAQUE), _opaque_tile(e2, OPAQUE)


@triton.jit
def _rope_store_grad(
    DX, COS, SIN, de1, de2, offs_s, offs_d, row_mask, stride_s, stride_cs, HALF: tl.constexpr,
    RELOAD: tl.constexpr = False,
):  # fmt: skip
    """Transpose of the rotation: fp32 grads w.r.t. the rotated halves -> grads of x.

    ``RELOAD`` reads cos/sin again (volatile) instead of letting the compiler keep the
    prologue's copies of the same rows in registers through the whole loop (RDNA3)."""
    c_ptr = offs_s[:, None] * stride_cs + offs_d[None, :]
    m = row_mask[:, None]
    c1 = tl.load(COS + c_ptr, mask=m, other=0.0, volatile=RELOAD)
    c2 = tl.load(COS + c_ptr + HALF, mask=m, other=0.0, volatile=RELOAD)
    s1 = tl.load(SIN + c_ptr, mask=m, other=0.0, volatile=RELOAD)
    s2 = tl.load(SIN + c_ptr + HALF, mask=m, other=0.0, volatile=RELOAD)
    dx1 = de1 * c1 + de2 * s2
    dx2 = de2 * c2 - de1 * s1
    ptr = DX + offs_s[:, None] * stride_s + offs_d[None, :]
    tl.store(ptr, dx1.to(DX.dtype.element_ty), mask=m)
    tl.store(ptr + HALF, dx2.to(DX.dtype.element_ty), mask=m)


@triton.jit
def _attn_fwd_kernel(
    QKV, COS, SIN, OUT, LSE,
    stride_qb, stride_qs, stride_qh, stride_cs,
    stride_ob, stride_os, stride_oh,
    S, H, sm_scale,
    HALF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, OPAQUE_TILES: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    # int64 batch offsets: the paper preset's qkv has ~1e9 elements.
    base = QKV + b.to(tl.int64) * stride_qb
    Q = base + h * stride_qh
    K = base + (H + h) * stride_qh
    V = base + (2 * H + h) * stride_qh

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_h = tl.arange(0, HALF)
    offs_d = tl.arange(0, 2 * HALF)
    mask_m = offs_m < S
    q1, q2 = _rope_load(Q, COS, SIN, offs_m, offs_h, mask_m, stride_qs, stride_cs, HALF)

    qk_scale = sm_scale * 1.4426950408889634  # work in base 2: exp2 is the native op
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, 2 * HALF], tl.float32)
    for start_n in range(0, S, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < S
        k1, k2 = _rope_load(
            K, COS, SIN, offs_n, offs_h, mask_n, stride_qs, stride_cs, HALF, OPAQUE_TILES
        )
        qk = tl.dot(q1, tl.trans(k1), input_precision=DOT_PRECISION)
        qk = tl.dot(q2, tl.trans(k2), qk, input_precision=DOT_PRECISION)
        qk = tl.where(mask_n[None, :], qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            V + offs_n[:, None] * stride_qs + offs_d[None, :], mask=mask_n[:, None], other=0.0
        )
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    o_ptr = OUT + b.to(tl.int64) * stride_ob + h * stride_oh
    o_ptr += offs_m[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptr, acc.to(OUT.dtype.element_ty), mask=mask_m[:, None])
    # Natural-log LSE (the usual convention); the backward converts back to base 2.
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
    tl.store(LSE + pid_bh.to(tl.int64) * S + offs_m, lse, mask=mask_m)


@triton.jit
def _attn_bwd_preprocess_kernel(
    OUT, DO, DELTA,
    stride_ob, stride_os, stride_oh,
    stride_dob, stride_dos, stride_doh,
    S, H,
    D: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    mask = (offs_m < S)[:, None]
    o = tl.load(
        OUT + b.to(tl.int64) * stride_ob + h * stride_oh
        + offs_m[:, None] * stride_os + offs_d[None, :],
        mask=mask, other=0.0,
    )  # fmt: skip
    do = tl.load(
        DO + b.to(tl.int64) * stride_dob + h * stride_doh
        + offs_m[:, None] * stride_dos + offs_d[None, :],
        mask=mask, other=0.0,
    )  # fmt: skip
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * S + offs_m, delta, mask=offs_m < S)


@triton.jit
def _attn_bwd_dkdv_kernel(
    QKV, COS, SIN, DO, LSE, DELTA, DQKV,
    stride_qb, stride_qs, stride_qh, stride_cs,
    stride_dob, stride_dos, stride_doh,
    stride_gb, stride_gs, stride_gh,
    S, H, sm_scale,
    HALF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, OPAQUE_TILES: tl.constexpr,
):  # fmt: skip
    """One program owns BLOCK_N keys of one (batch, head) and sweeps all queries."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    base = QKV + b.to(tl.int64) * stride_qb
    Q = base + h * stride_qh
    K = base + (H + h) * stride_qh
    V = base + (2 * H + h) * stride_qh
    DO_ = DO + b.to(tl.int64) * stride_dob + h * stride_doh
    LSE_ = LSE + pid_bh.to(tl.int64) * S
    DELTA_ = DELTA + pid_bh.to(tl.int64) * S

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_h = tl.arange(0, HALF)
    offs_d = tl.arange(0, 2 * HALF)
    mask_n = offs_n < S
    k1, k2 = _rope_load(K, COS, SIN, offs_n, offs_h, mask_n, stride_qs, stride_cs, HALF)
    v = tl.load(V + offs_n[:, None] * stride_qs + offs_d[None, :], mask=mask_n[:, None], other=0.0)

    qk_scale = sm_scale * 1.4426950408889634
    dk1 = tl.zeros([BLOCK_N, HALF], tl.float32)
    dk2 = tl.zeros([BLOCK_N, HALF], tl.float32)
    dv = tl.zeros([BLOCK_N, 2 * HALF], tl.float32)
    for start_m in range(0, S, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < S
        q1, q2 = _rope_load(
            Q, COS, SIN, offs_m, offs_h, mask_m, stride_qs, stride_cs, HALF, OPAQUE_TILES
        )
        do = tl.load(
            DO_ + offs_m[:, None] * stride_dos + offs_d[None, :], mask=mask_m[:, None], other=0.0
        )
        do = _opaque_tile(do, OPAQUE_TILES)  # used as is (dv) and transposed (dpT)
        # Padded query rows get lse = +inf, hence p = 0 and no contribution.
        lse2 = tl.load(LSE_ + offs_m, mask=mask_m, other=float("inf")) * 1.4426950408889634
        delta = tl.load(DELTA_ + offs_m, mask=mask_m, other=0.0)
        # Transposed scores [BLOCK_N, BLOCK_M] so every product below is a plain dot.
        qkT = tl.dot(k1, tl.trans(q1), input_precision=DOT_PRECISION)
        qkT = tl.dot(k2, tl.trans(q2), qkT, input_precision=DOT_PRECISION)
        pT = tl.math.exp2(qkT * qk_scale - lse2[None, :])
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = (pT * (dpT - delta[None, :])).to(q1.dtype)
        dk1 = tl.dot(dsT, q1, dk1, input_precision=DOT_PRECISION)
        dk2 = tl.dot(dsT, q2, dk2, input_precision=DOT_PRECISION)

    G = DQKV + b.to(tl.int64) * stride_gb
    DK = G + (H + h) * stride_gh
    _rope_store_grad(
        DK, COS, SIN, dk1 * sm_scale, dk2 * sm_scale, offs_n, offs_h, mask_n, stride_gs,
        stride_cs, HALF, OPAQUE_TILES,
    )  # fmt: skip
    DV = G + (2 * H + h) * stride_gh
    tl.store(
        DV + offs_n[:, None] * stride_gs + offs_d[None, :],
        dv.to(DQKV.dtype.element_ty),
        mask=mask_n[:, None],
    )


@triton.jit
def _attn_bwd_dq_kernel(
    QKV, COS, SIN, DO, LSE, DELTA, DQKV,
    stride_qb, stride_qs, stride_qh, stride_cs,
    stride_dob, stride_dos, stride_doh,
    stride_gb, stride_gs, stride_gh,
    S, H, sm_scale,
    HALF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, OPAQUE_TILES: tl.constexpr,
):  # fmt: skip
    """One program owns BLOCK_M queries of one (batch, head) and sweeps all keys."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    base = QKV + b.to(tl.int64) * stride_qb
    Q = base + h * stride_qh
    K = base + (H + h) * stride_qh
    V = base + (2 * H + h) * stride_qh

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_h = tl.arange(0, HALF)
    offs_d = tl.arange(0, 2 * HALF)
    mask_m = offs_m < S
    q1, q2 = _rope_load(Q, COS, SIN, offs_m, offs_h, mask_m, stride_qs, stride_cs, HALF)
    do = tl.load(
        DO + b.to(tl.int64) * stride_dob + h * stride_doh
        + offs_m[:, None] * stride_dos + offs_d[None, :],
        mask=mask_m[:, None], other=0.0,
    )  # fmt: skip
    lse2 = (
        tl.load(LSE + pid_bh.to(tl.int64) * S + offs_m, mask=mask_m, other=0.0) * 1.4426950408889634
    )
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * S + offs_m, mask=mask_m, other=0.0)

    qk_scale = sm_scale * 1.4426950408889634
    dq1 = tl.zeros([BLOCK_M, HALF], tl.float32)
    dq2 = tl.zeros([BLOCK_M, HALF], tl.float32)
    for start_n in range(0, S, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < S
        k1, k2 = _rope_load(
            K, COS, SIN, offs_n, offs_h, mask_n, stride_qs, stride_cs, HALF, OPAQUE_TILES
        )
        v = tl.load(
            V + offs_n[:, None] * stride_qs + offs_d[None, :], mask=mask_n[:, None], other=0.0
        )
        v = _opaque_tile(v, OPAQUE_TILES)  # transposed in a register layout otherwise
        qk = tl.dot(q1, tl.trans(k1), input_precision=DOT_PRECISION)
        qk = tl.dot(q2, tl.trans(k2), qk, input_precision=DOT_PRECISION)
        p = tl.math.exp2(qk * qk_scale - lse2[:, None])
        p = tl.where(mask_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = (p * (dp - delta[:, None])).to(k1.dtype)
        dq1 = tl.dot(ds, k1, dq1, input_precision=DOT_PRECISION)
        dq2 = tl.dot(ds, k2, dq2, input_precision=DOT_PRECISION)

    DQ = DQKV + b.to(tl.int64) * stride_gb + h * stride_gh
    _rope_store_grad(
        DQ, COS, SIN, dq1 * sm_scale, dq2 * sm_scale, offs_m, offs_h, mask_m, stride_gs,
        stride_cs, HALF, OPAQUE_TILES,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------

# Target family -> head dim -> (BLOCK_M, BLOCK_N, num_warps, num_stages), fixed tables (no
# autotune: one config per shape keeps launches deterministic and compile-free after warm-up).
# Families share a row unless the static report (hrm-fast kernels-report) shows they must differ.
# Head dims 32 (seed) and 64 (paper, TRM) are the presets'; 128 is any model with
# hidden / heads = 128 (e.g. --hidden-size 512 --num-heads 4), compiled by the report at the
# paper shape with 4 heads (LaunchShape.extra_heads).
#
# nvidia (sm_80/86/89/90): every entry compiles with zero spill bytes for bf16, with and without
# 16-byte alignment specialisation, and fits sm_89's 99 KB of shared memory. Register pressure
# comes mostly from re-applying RoPE to the streamed tile (four fp32 cos/sin tiles per
# iteration), hence the small streamed tiles, especially in the backward where dk/dv hold three
# fp32 accumulators.
# cdna (gfx90a, gfx942; wave 64): the nvidia tables, except dq at D=64 (paper): 8 waves of
# (64, 32) need 2 waves per SIMD, which caps a wave at 256 of the 512 VGPRs, and it spills
# (25 VGPRs on gfx90a, 38 on gfx942); (64, 16) with 8 waves fits in 204 VGPRs. At D=128 the
# nvidia backward rows (8 waves, so 256 VGPRs each) spill on both (dk/dv 14-20 VGPRs, dq
# 98-111); with 4 waves a wave may use AGPRs too: dk/dv (16, 32, 4) 293 VGPRs (37 AGPRs),
# dq (32, 16, 4) 256 on gfx942 / 260 on gfx90a, no spills.
# rdna3 (gfx1100; wave 32, at most 256 VGPRs per wave): every kernel runs with OPAQUE_TILES
# (see _opaque_tile). Without it the backward spilled at every configuration, even dk/dv at
# D=32 with 16x16 tiles and one wave (256 VGPRs + 124 spilled, 500 B scratch per lane): the
# streamed Q (dk/dv) or K (dq) tile feeds one dot as is and one transposed, and Triton
# re-computed its RoPE -- x1, x2 and the four fp32 cos/sin tiles -- in both WMMA operand
# layouts, which on RDNA3 repeat each row in both half-waves (16 values per lane per 16x16
# tile instead of 8). dO (dk/dv) and V (dq) were likewise transposed in registers, and the
# prologue's cos/sin rows stayed live through the loop for the epilogue's rotation. The
# forward at D=64 spilled for the same reason (nvidia row: 256 + 9; (64, 32): 256 + 252).
# With the barrier (kernels-report, gfx1100, VGPRs, no spills):
#   fwd   D=32 (64, 64, 4, 1) 188   D=64 (64, 32, 4, 1) 180
#   dk/dv D=32 (16, 64, 4, 1) 187   D=64 (16, 32, 4, 1) 243
#   dq    D=32 (64, 16, 4, 1) 158   D=64 (32, 16, 4, 1) 209
# D=128 has no rdna3 rows (SDPA): the backward still spills at every tile tried, least at
# 16x16 with 8 waves (dk/dv 255 VGPRs + 28 spilled, dq 256 + 26); 1 to 4 waves or wider
# tiles spill more. By the layout arithmetic the owned K and V rows alone take 128 of the
# 256 VGPRs there: the WMMA A operand gives each lane a whole row of k1, k2 and v (64 + 64 +
# 128 bf16), in every wave, before the loop's tiles and the three fp32 accumulators.
# D=128 on nvidia compiles without spills on sm_80/89/90 (sm_80: fwd 252, dk/dv 244, dq 248
# registers; dq uses 64 KB of shared memory).
_FWD_NVIDIA = {32: (64, 64, 4, 3), 64: (128, 64, 8, 2), 128: (64, 32, 8, 2)}
_DKDV_NVIDIA = {32: (32, 64, 4, 2), 64: (16, 64, 8, 2), 128: (16, 32, 8, 2)}  # (M loop, N own)
_DQ_NVIDIA = {32: (64, 32, 4, 2), 64: (64, 32, 8, 2), 128: (32, 32, 8, 2)}  # (M own, N loop)
_FWD_CFG = {
    "nvidia": _FWD_NVIDIA,
    "cdna": _FWD_NVIDIA,
    "rdna3": {32: (64, 64, 4, 1), 64: (64, 32, 4, 1)},
}
_DKDV_CFG = {
    "nvidia": _DKDV_NVIDIA,
    "cdna": {**_DKDV_NVIDIA, 128: (16, 32, 4, 2)},
    "rdna3": {32: (16, 64, 4, 1), 64: (16, 32, 4, 1)},
}
_DQ_CFG = {
    "nvidia": _DQ_NVIDIA,
    "cdna": {**_DQ_NVIDIA, 64: (64, 16, 8, 2), 128: (32, 16, 4, 2)},
    "rdna3": {32: (64, 16, 4, 1), 64: (32, 16, 4, 1)},
}
# Families whose kernels compile with OPAQUE_TILES (an AMD-only asm barrier, _opaque_tile).
_OPAQUE_TILES = {"nvidia": False, "cdna": False, "rdna3": True}
HEAD_DIMS = tuple(_FWD_NVIDIA)  # head dims the kernels take; a family's tables may lack some


def _pre_block_m(D: int) -> int:
    # delta = rowsum(dO * O) is bandwidth-bound: ~2K elements per program keeps registers low.
    return rows_per_program(D)


# Interpreter runs use one config (None) unless a test sets a target family here to run that
# family's launch configuration on the CPU (tests/kernels/test_attention.py).
_interpret_family: str | None = None


def _family(t: torch.Tensor) -> str | None:
    if INTERPRET:
        return _interpret_family
    return device_target_family(t.device)


def _cfg(table: dict, D: int, t: torch.Tensor) -> tuple[int, int, int, int]:
    # Interpreter: one config; fewer, larger tiles run faster in numpy and still exercise
    # the masks and multi-block loops (S = 130, 901). aot_specs always reads the GPU tables.
    family = _family(t)
    if family is None:
        return (64, 64, 4, 1)
    return table[family][D]


def _triton_attention_on(qkv: torch.Tensor) -> bool:
    """Whether the kernels have launch configurations for this head dim on this device's
    target family (RDNA3 has none at D=128, see the tables); otherwise SDPA runs."""
    D = qkv.shape[-1]
    family = _family(qkv) if (INTERPRET or qkv.is_cuda) else None
    if family is None:
        return D in HEAD_DIMS
    return all(D in table[family] for table in (_FWD_CFG, _DKDV_CFG, _DQ_CFG))


def _opaque_tiles(t: torch.Tensor) -> bool:
    family = _family(t)
    return family is not None and _OPAQUE_TILES[family]


# tl.dot input precision for every launch. fp32 inputs (tests, debugging) get exact fp32
# products; with bf16/fp16 inputs every dot has 16-bit operands and the precision is ignored
# (the sm_80/sm_90 PTX is identical for "tf32" and "ieee"). "ieee" is also the one value every
# AMD target accepts: gfx90a and gfx1100 reject "tf32".
_DOT_PRECISION = "ieee"


def _check(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    B, S, H3, D = qkv.shape
    assert H3 % 3 == 0, f"qkv must be [B, S, 3H, D], got {tuple(qkv.shape)}"
    assert D in HEAD_DIMS, f"head dim {D} not supported {HEAD_DIMS}"
    assert cos.shape[0] >= S and cos.shape[1] == D and sin.shape == cos.shape
    return B, S, H3 // 3, D


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    # Kernels index the head dim with unit stride; qkv_proj views always satisfy this.
    return t if t.stride(-1) == 1 else t.contiguous()


def _attention_fwd(qkv, cos, sin, out=None, lse=None):
    """Launch the forward kernel. Returns ``(out [B,S,H,D] qkv.dtype, lse [B,H,S] fp32)``."""
    B, S, H, D = _check(qkv, cos, sin)
    qkv = _unit_last(qkv)
    cos = cos.to(torch.float32).contiguous()
    sin = sin.to(torch.float32).contiguous()
    if out is None:
        out = torch.empty((B, S, H, D), device=qkv.device, dtype=qkv.dtype)
    if lse is None:
        lse = torch.empty((B, H, S), device=qkv.device, dtype=torch.float32)
    assert out.stride(-1) == 1 and lse.is_contiguous()
    bm, bn, warps, stages = _cfg(_FWD_CFG, D, qkv)
    grid = (triton.cdiv(S, bm), B * H)
    torch.library.wrap_triton(_attn_fwd_kernel)[grid](
        qkv, cos, sin, out, lse,
        qkv.stride(0), qkv.stride(1), qkv.stride(2), cos.stride(0),
        out.stride(0), out.stride(1), out.stride(2),
        S, H, 1.0 / math.sqrt(D),
        HALF=D // 2, BLOCK_M=bm, BLOCK_N=bn, DOT_PRECISION=_DOT_PRECISION,
        OPAQUE_TILES=_opaque_tiles(qkv), num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out, lse


def _attention_bwd(do, qkv, cos, sin, out, lse, dqkv=None):
    """Launch preprocess + dk/dv + dq kernels. Returns ``dqkv`` ``[B, S, 3H, D]`` in qkv's dtype."""
    B, S, H, D = _check(qkv, cos, sin)
    qkv = _unit_last(qkv)
    do = _unit_last(do)
    out = _unit_last(out)
    cos = cos.to(torch.float32).contiguous()
    sin = sin.to(torch.float32).contiguous()
    lse = lse.contiguous()
    if dqkv is None:
        dqkv = torch.empty((B, S, 3 * H, D), device=qkv.device, dtype=qkv.dtype)
    assert dqkv.stride(-1) == 1
    delta = torch.empty((B, H, S), device=qkv.device, dtype=torch.float32)
    prec = _DOT_PRECISION
    scale = 1.0 / math.sqrt(D)

    pre_bm = _pre_block_m(D)
    torch.library.wrap_triton(_attn_bwd_preprocess_kernel)[(triton.cdiv(S, pre_bm), B * H)](
        out, do, delta,
        out.stride(0), out.stride(1), out.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        S, H, D=D, BLOCK_M=pre_bm, num_warps=MEMORY_BOUND_WARPS,
    )  # fmt: skip
    args = (
        qkv, cos, sin, do, lse, delta, dqkv,
        qkv.stride(0), qkv.stride(1), qkv.stride(2), cos.stride(0),
        do.stride(0), do.stride(1), do.stride(2),
        dqkv.stride(0), dqkv.stride(1), dqkv.stride(2),
        S, H, scale,
    )  # fmt: skip
    opaque = _opaque_tiles(qkv)
    bm, bn, warps, stages = _cfg(_DKDV_CFG, D, qkv)
    torch.library.wrap_triton(_attn_bwd_dkdv_kernel)[(triton.cdiv(S, bn), B * H)](
        *args, HALF=D // 2, BLOCK_M=bm, BLOCK_N=bn, DOT_PRECISION=prec, OPAQUE_TILES=opaque,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    bm, bn, warps, stages = _cfg(_DQ_CFG, D, qkv)
    torch.library.wrap_triton(_attn_bwd_dq_kernel)[(triton.cdiv(S, bm), B * H)](
        *args, HALF=D // 2, BLOCK_M=bm, BLOCK_N=bn, DOT_PRECISION=prec, OPAQUE_TILES=opaque,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return dqkv


# --------------------------------------------------------------------------------------------
# torch.library registration (CUDA path)
# --------------------------------------------------------------------------------------------


@torch.library.triton_op("hrm_fast::rope_attention", mutates_args=())
def _rope_attention_op(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # Returns (out, lse): lse is an output so autograd can save it for the backward.
    return _attention_fwd(qkv, cos, sin)


@torch.library.triton_op("hrm_fast::rope_attention_bwd", mutates_args=())
def _rope_attention_bwd_op(
    do: torch.Tensor,
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
) -> torch.Tensor:
    return _attention_bwd(do, qkv, cos, sin, out, lse)


def _setup_context(ctx, inputs, output):
    qkv, cos, sin = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(qkv, cos, sin, out, lse)


def _backward(ctx, grad_out, grad_lse):
    qkv, cos, sin, out, lse = ctx.saved_tensors
    dqkv = torch.ops.hrm_fast.rope_attention_bwd(grad_out, qkv, cos, sin, out, lse)
    return dqkv, None, None


torch.library.register_autograd("hrm_fast::rope_attention", _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Public API and reference
# --------------------------------------------------------------------------------------------


def rope_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE + non-causal attention: ``[B, S, 3H, D]`` -> ``[B, S, H, D]`` (see module doc).

    Head dims without launch configurations on the device's target family run through SDPA."""
    if use_triton(qkv):
        if _triton_attention_on(qkv):
            return torch.ops.hrm_fast.rope_attention(qkv, cos, sin)[0]
        return rope_attention_sdpa(qkv, cos, sin)
    return rope_attention_ref(qkv, cos, sin)


def rope_attention_sdpa(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as in rope_attention_ref, then PyTorch's fused SDPA (no [S, S] scores in memory)."""
    D = qkv.shape[3]
    q, k, v = _rope_qkv(qkv, cos, sin)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(D))
    return out.transpose(1, 2).contiguous()


def _rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q, k (rotated) and v as ``[B, H, S, D]``. RoPE runs in fp32 (fp64 for fp64 inputs)."""
    S, H = qkv.shape[1], qkv.shape[2] // 3
    acc = torch.promote_types(qkv.dtype, torch.float32)
    cos, sin = cos[:S].to(acc), sin[:S].to(acc)
    q, k, v = qkv.split(H, dim=2)
    return (t.transpose(1, 2) for t in (apply_rope(q, cos, sin), apply_rope(k, cos, sin), v))


def rope_attention_ref(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Eager reference: HRM's apply_rotary_pos_emb, then softmax(q k^T / sqrt(D)) v.

    RoPE runs in fp32 (fp64 for fp64 inputs) and is rounded back to the input dtype, as HRM
    does. Scores come from input-dtype matmuls; the softmax runs in fp32 (fp64) and the
    probabilities are rounded to the input dtype before the PV product, like flash attention.
    """
    D = qkv.shape[3]
    dtype = qkv.dtype
    acc = torch.promote_types(dtype, torch.float32)
    q, k, v = _rope_qkv(qkv, cos, sin)  # [B, H, S, D]
    scores = torch.matmul(q, k.transpose(-1, -2)).to(acc) * (1.0 / math.sqrt(D))
    p = torch.softmax(scores, dim=-1).to(dtype)
    out = torch.matmul(p, v)  # [B, H, S, D]
    return out.transpose(1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# Ahead-of-time compile specs
# --------------------------------------------------------------------------------------------

_SIG_FWD = {
    "QKV": "*bf16", "COS": "*fp32", "SIN": "*fp32", "OUT": "*bf16", "LSE": "*fp32",
    "stride_qb": "i32", "stride_qs": "i32", "stride_qh": "i32", "stride_cs": "i32",
    "stride_ob": "i32", "stride_os": "i32", "stride_oh": "i32",
    "S": "i32", "H": "i32", "sm_scale": "fp32",
    "HALF": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
    "DOT_PRECISION": "constexpr", "OPAQUE_TILES": "constexpr",
}  # fmt: skip
_SIG_PRE = {
    "OUT": "*bf16", "DO": "*bf16", "DELTA": "*fp32",
    "stride_ob": "i32", "stride_os": "i32", "stride_oh": "i32",
    "stride_dob": "i32", "stride_dos": "i32", "stride_doh": "i32",
    "S": "i32", "H": "i32", "D": "constexpr", "BLOCK_M": "constexpr",
}  # fmt: skip
_SIG_BWD = {
    "QKV": "*bf16", "COS": "*fp32", "SIN": "*fp32", "DO": "*bf16", "LSE": "*fp32",
    "DELTA": "*fp32", "DQKV": "*bf16",
    "stride_qb": "i32", "stride_qs": "i32", "stride_qh": "i32", "stride_cs": "i32",
    "stride_dob": "i32", "stride_dos": "i32", "stride_doh": "i32",
    "stride_gb": "i32", "stride_gs": "i32", "stride_gh": "i32",
    "S": "i32", "H": "i32", "sm_scale": "fp32",
    "HALF": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
    "DOT_PRECISION": "constexpr", "OPAQUE_TILES": "constexpr",
}  # fmt: skip


def aot_specs(shape: LaunchShape, target: str = "nvidia") -> list[AotSpec]:
    """Launch configs of the four attention kernels at the training shape (bf16), plus those
    at the shape's extra head counts where the target family has rows for that head dim."""
    B, S = shape.batch, shape.seq_len
    specs = _aot_specs_for(B, S, shape.heads, shape.head_dim, target=target)
    for heads in shape.extra_heads:
        D = shape.hidden // heads
        if D in _DQ_CFG[target]:  # RDNA3 has no D=128 rows
            specs += _aot_specs_for(B, S, heads, D, target=target)
    return specs


def _aot_specs_for(B: int, S: int, H: int, D: int, target: str = "nvidia") -> list[AotSpec]:
    note = f"B={B} S={S} H={H} D={D} bf16"
    prec = _DOT_PRECISION
    specs = []
    opaque = _OPAQUE_TILES[target]
    bm, bn, w, st = _FWD_CFG[target][D]
    specs.append(
        AotSpec(
            "attention_fwd", _attn_fwd_kernel, dict(_SIG_FWD),
            {"HALF": D // 2, "BLOCK_M": bm, "BLOCK_N": bn, "DOT_PRECISION": prec,
             "OPAQUE_TILES": opaque},
            num_warps=w, num_stages=st, grid=(triton.cdiv(S, bm), B * H), note=note,
            has_dot=True,
        )
    )  # fmt: skip
    specs.append(
        AotSpec(
            "attention_bwd_preprocess", _attn_bwd_preprocess_kernel, dict(_SIG_PRE),
            {"D": D, "BLOCK_M": _pre_block_m(D)}, num_warps=MEMORY_BOUND_WARPS, num_stages=2,
            grid=(triton.cdiv(S, _pre_block_m(D)), B * H), note=note, has_dot=False,
        )
    )  # fmt: skip
    bm, bn, w, st = _DKDV_CFG[target][D]
    specs.append(
        AotSpec(
            "attention_bwd_dkdv", _attn_bwd_dkdv_kernel, dict(_SIG_BWD),
            {"HALF": D // 2, "BLOCK_M": bm, "BLOCK_N": bn, "DOT_PRECISION": prec,
             "OPAQUE_TILES": opaque},
            num_warps=w, num_stages=st, grid=(triton.cdiv(S, bn), B * H), note=note,
            has_dot=True,
        )
    )  # fmt: skip
    bm, bn, w, st = _DQ_CFG[target][D]
    specs.append(
        AotSpec(
            "attention_bwd_dq", _attn_bwd_dq_kernel, dict(_SIG_BWD),
            {"HALF": D // 2, "BLOCK_M": bm, "BLOCK_N": bn, "DOT_PRECISION": prec,
             "OPAQUE_TILES": opaque},
            num_warps=w, num_stages=st, grid=(triton.cdiv(S, bm), B * H), note=note,
            has_dot=True,
        )
    )  # fmt: skip
    return specs
