"""Parity tests for the fused RoPE attention kernels (kernels/attention.py).

The launchers run under TRITON_INTERPRET=1 on CPU tensors (conftest.py). Everything is
compared with the eager reference evaluated in float64. fp32 gets tight absolute bounds; for
fp16 the kernel's error must be within 2x the error of the same eager reference run in fp16
(fp16 RoPE rounding, fp16 matmul inputs, fp32 softmax, fp16 probabilities), i.e. the kernel
may not be meaningfully less accurate than the PyTorch computation it replaces.
"""

import math

import pytest
import torch
from hrm_fast.kernels import attention as attn
from hrm_fast.kernels.attention import (
    _attention_bwd,
    _attention_fwd,
    rope_attention,
    rope_attention_ref,
)

from hrm_fast.compile_report import preset_shape
from hrm_fast.tolerances import ATTENTION_DQKV, ATTENTION_OUT
from tests.support.parity import assert_close, kernel_device, max_err

pytestmark = pytest.mark.interpret


def rope_tables(S: int, D: int, base: float = 10000.0):
    """cos, sin [S, D] fp32 exactly as HRM's RotaryEmbedding (emb = cat(freqs, freqs))."""
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    freqs = torch.outer(torch.arange(S, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def make_inputs(B, S, H, D, dtype, seed, strided=False, random_tables=False):
    g = torch.Generator().manual_seed(seed)
    dev = kernel_device()
    if strided:
        # A qkv view with a padded head axis and batch-second storage: nothing contiguous.
        base = torch.randn(S, B, 3 * H + 1, D, generator=g).to(dtype).to(dev)
        qkv = base.transpose(0, 1)[:, :, : 3 * H]
        assert not qkv.is_contiguous()
    else:
        qkv = torch.randn(B, S, 3 * H, D, generator=g).to(dtype).to(dev)
    do = torch.randn(B, S, H, D, generator=g).to(dtype).to(dev)
    cos, sin = rope_tables(S, D)
    if random_tables:
        # HRM's tables have equal halves; unrelated halves check the half-split RoPE algebra.
        cos, sin = torch.rand(S, D, generator=g) * 2 - 1, torch.rand(S, D, generator=g) * 2 - 1
    return qkv, do, cos.to(dev), sin.to(dev)


def run_kernels(qkv, do, cos, sin):
    """Forward + backward through the launchers with NaN-poisoned output buffers."""
    B, S, H3, D = qkv.shape
    out = torch.full((B, S, H3 // 3, D), float("nan"), dtype=qkv.dtype, device=qkv.device)
    lse = torch.full((B, H3 // 3, S), float("nan"), dtype=torch.float32, device=qkv.device)
    dqkv = torch.full((B, S, H3, D), float("nan"), dtype=qkv.dtype, device=qkv.device)
    out_r, lse_r = _attention_fwd(qkv, cos, sin, out=out, lse=lse)
    assert out_r.data_ptr() == out.data_ptr() and lse_r.data_ptr() == lse.data_ptr()
    dqkv_r = _attention_bwd(do, qkv, cos, sin, out, lse, dqkv=dqkv)
    assert dqkv_r.data_ptr() == dqkv.data_ptr()
    return out, lse, dqkv


def reference(qkv, do, cos, sin, dtype):
    """Eager reference output, LSE and d(qkv) with autograd, evaluated in ``dtype`` on CPU."""
    x = qkv.detach().cpu().to(dtype).requires_grad_(True)
    out = rope_attention_ref(x, cos.cpu(), sin.cpu())
    out.backward(do.detach().cpu().to(dtype))
    return out.detach(), x.grad


def lse_reference(qkv, cos, sin):
    """float64 log-sum-exp of the scaled scores, [B, H, S]."""
    B, S, H3, D = qkv.shape
    H = H3 // 3
    x = qkv.detach().cpu().double()
    c, s = cos.cpu().double()[:, None], sin.cpu().double()[:, None]

    def rope(t):
        t1, t2 = t.chunk(2, -1)
        return t * c + torch.cat((-t2, t1), -1) * s

    q, k = rope(x[:, :, :H]).transpose(1, 2), rope(x[:, :, H : 2 * H]).transpose(1, 2)
    return torch.logsumexp(q @ k.transpose(-1, -2) / math.sqrt(D), dim=-1)


# (B, S, H, D, strided, random_tables): odd lengths exercise the row/column masks; S=901 is
# HRM's ARC length, S=916 TRM's (16 puzzle-embedding positions) at its head dim 64.
FP32_CASES = [
    (2, 37, 2, 32, False, False),
    (2, 37, 1, 64, False, True),
    (1, 130, 1, 64, True, False),
    (3, 37, 1, 128, False, False),
    (1, 130, 2, 128, True, False),
    (1, 901, 1, 32, False, False),
    (1, 916, 1, 64, False, False),  # ARC / maze (900) + 16 TRM puzzle positions
    (2, 97, 2, 64, False, False),  # Sudoku (81) + 16 TRM puzzle positions
]
FP16_CASES = [
    (2, 37, 2, 32, True),
    (1, 130, 2, 64, False),
    (2, 37, 1, 128, False),
    (1, 901, 1, 64, False),
    (1, 916, 1, 64, False),
    (2, 97, 1, 64, False),  # Sudoku + 16 puzzle positions
]


@pytest.mark.parametrize("B,S,H,D,strided,random_tables", FP32_CASES)
def test_fp32_matches_float64_reference(B, S, H, D, strided, random_tables):
    qkv, do, cos, sin = make_inputs(
        B, S, H, D, torch.float32, seed=1000 + S + D, strided=strided, random_tables=random_tables
    )
    out, lse, dqkv = run_kernels(qkv, do, cos, sin)
    ref_out, ref_dqkv = reference(qkv, do, cos, sin, torch.float64)
    # Inputs are O(1); fp32 accumulation over <= 901 keys stays well inside 2e-5.
    assert_close(out, ref_out, *ATTENTION_OUT, name="out")
    assert_close(lse, lse_reference(qkv, cos, sin), atol=2e-5, rtol=1e-5, name="lse")
    assert_close(dqkv, ref_dqkv, *ATTENTION_DQKV, name="dqkv")


@pytest.mark.parametrize("B,S,H,D,strided", FP16_CASES)
def test_fp16_within_2x_eager_fp16_error(B, S, H, D, strided):
    qkv, do, cos, sin = make_inputs(B, S, H, D, torch.float16, seed=2000 + S + D, strided=strided)
    out, lse, dqkv = run_kernels(qkv, do, cos, sin)
    ref_out, ref_dqkv = reference(qkv, do, cos, sin, torch.float64)
    eager_out, eager_dqkv = reference(qkv, do, cos, sin, torch.float16)
    assert torch.isfinite(out).all() and torch.isfinite(dqkv).all()
    # Floor: half an fp16 ulp at 1.0 (4.9e-4), the rounding of any single stored O(1) value,
    # so a lucky eager run cannot make the bound smaller than one output rounding.
    floor = 2.0**-11
    for name, got, eager, want in (
        ("out", out, eager_out, ref_out),
        ("dqkv", dqkv, eager_dqkv, ref_dqkv),
    ):
        err, bound = max_err(got, want), 2 * max_err(eager, want) + floor
        assert err <= bound, f"{name}: kernel err {err:.3e} > 2x eager fp16 err + floor {bound:.3e}"
    # LSE is fp32 over fp16-rounded rotated q, k: a loose absolute check catches layout bugs.
    assert_close(lse, lse_reference(qkv, cos, sin), atol=2e-2, rtol=0, name="lse")


def test_backward_is_deterministic():
    qkv, do, cos, sin = make_inputs(2, 130, 1, 64, torch.float16, seed=3)
    out, lse, dqkv1 = run_kernels(qkv, do, cos, sin)
    dqkv2 = _attention_bwd(do, qkv, cos, sin, out, lse)
    assert torch.equal(dqkv1, dqkv2)
    out2, lse2 = _attention_fwd(qkv, cos, sin)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


def test_public_cpu_path_is_reference():
    qkv, do, cos, sin = make_inputs(2, 37, 2, 32, torch.float32, seed=4)
    qkv, cos, sin = qkv.cpu(), cos.cpu(), sin.cpu()
    x = qkv.clone().requires_grad_(True)
    out = rope_attention(x, cos, sin)
    assert out.shape == (2, 37, 2, 32) and out.is_contiguous() and out.dtype == qkv.dtype
    assert torch.equal(out, rope_attention_ref(qkv, cos, sin))
    out.backward(do.cpu())
    assert x.grad.shape == qkv.shape and torch.isfinite(x.grad).all()


def test_reference_matches_hrm_rope_and_sdpa():
    # Independent spelling of the reference: HRM's apply_rotary_pos_emb + torch SDPA, float64.
    qkv, _, cos, sin = make_inputs(2, 37, 2, 64, torch.float64, seed=5)
    qkv, cos, sin = qkv.cpu(), cos.cpu(), sin.cpu()

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    c, s = cos.double().unsqueeze(-2), sin.double().unsqueeze(-2)
    q, k, v = qkv[:, :, :2], qkv[:, :, 2:4], qkv[:, :, 4:]
    q, k = q * c + rotate_half(q) * s, k * c + rotate_half(k) * s
    want = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    ).transpose(1, 2)
    assert_close(rope_attention_ref(qkv, cos, sin), want, atol=1e-12, rtol=1e-12, name="ref")


def test_triton_op_registered():
    assert hasattr(torch.ops.hrm_fast, "rope_attention")
    assert hasattr(torch.ops.hrm_fast, "rope_attention_bwd")
    schema = str(torch.ops.hrm_fast.rope_attention.default._schema)
    assert "Tensor qkv" in schema and "Tensor cos" in schema and "Tensor sin" in schema


@pytest.mark.parametrize("preset", ["seed", "paper", "trm-arc1", "trm-arc2"])
def test_aot_specs_match_kernel_signatures(preset):
    specs = attn.aot_specs(preset_shape(preset))
    assert {s.name for s in specs} == {
        "attention_fwd",
        "attention_bwd_preprocess",
        "attention_bwd_dkdv",
        "attention_bwd_dq",
    }
    for s in specs:
        assert list(s.signature) == list(s.fn.arg_names), s.name
        for k in s.constexprs:
            assert s.signature[k] == "constexpr", (s.name, k)
        assert s.has_dot == (s.name != "attention_bwd_preprocess")
    # GPU launch configs even though this process runs the interpreter.
    fwd = next(s for s in specs if s.name == "attention_fwd")
    D = {"seed": 32, "paper": 64, "trm-arc1": 64, "trm-arc2": 64}[preset]
    assert fwd.constexprs["HALF"] == D // 2
    assert (fwd.constexprs["BLOCK_M"], fwd.constexprs["BLOCK_N"]) == attn._FWD_CFG["nvidia"][D][:2]
    assert (fwd.num_warps, fwd.num_stages) == attn._FWD_CFG["nvidia"][D][2:]


def test_per_target_tables():
    # CDNA differs from NVIDIA only where the static report showed a spill (dq, D=64).
    cdna = attn.aot_specs(preset_shape("paper"), target="cdna")
    dq = next(s for s in cdna if s.name == "attention_bwd_dq")
    assert (dq.constexprs["BLOCK_M"], dq.constexprs["BLOCK_N"], dq.num_warps) == (64, 16, 8)
    assert attn._DQ_CFG["cdna"][32] == attn._DQ_CFG["nvidia"][32]
    # Only RDNA3 compiles the asm barrier; NVIDIA and CDNA code is what it was without it.
    for target, opaque in (("nvidia", False), ("cdna", False), ("rdna3", True)):
        dots = [s for s in attn.aot_specs(preset_shape("seed"), target=target) if s.has_dot]
        assert len(dots) == 3 and all(s.constexprs["OPAQUE_TILES"] is opaque for s in dots)
    # D=128 is compiled with the paper preset (4 heads) where a family has rows for it.
    for target, n_specs in (("nvidia", 8), ("cdna", 8), ("rdna3", 4)):
        specs = attn.aot_specs(preset_shape("paper"), target=target)
        assert len(specs) == n_specs, target
        d128 = [s for s in specs if "D=128" in s.note]
        assert len(d128) == n_specs - 4 and all("H=4" in s.note for s in d128)


# RDNA3's launch configurations (16-row tiles, OPAQUE_TILES, volatile cos/sin reloads) on the
# CPU. The interpreter has no inline asm, so _opaque_tile is the identity here as on the GPU.
RDNA3_CASES = [
    (2, 37, 2, 32, torch.float32),
    (1, 130, 1, 64, torch.float32),
    (1, 130, 2, 32, torch.float16),
    (2, 37, 1, 64, torch.float16),
]


@pytest.mark.parametrize("B,S,H,D,dtype", RDNA3_CASES)
def test_rdna3_launch_configs_match_reference(monkeypatch, B, S, H, D, dtype):
    monkeypatch.setattr(attn, "_interpret_family", "rdna3")
    qkv, do, cos, sin = make_inputs(B, S, H, D, dtype, seed=4000 + S + D)
    assert attn._cfg(attn._DKDV_CFG, D, qkv) == attn._DKDV_CFG["rdna3"][D]
    assert attn._opaque_tiles(qkv)
    out, lse, dqkv = run_kernels(qkv, do, cos, sin)
    ref_out, ref_dqkv = reference(qkv, do, cos, sin, torch.float64)
    if dtype == torch.float32:
        assert_close(out, ref_out, atol=2e-5, rtol=1e-5, name="out")
        assert_close(dqkv, ref_dqkv, atol=5e-5, rtol=1e-5, name="dqkv")
    else:
        eager_out, eager_dqkv = reference(qkv, do, cos, sin, dtype)
        floor = 2.0**-11
        assert max_err(out, ref_out) <= 2 * max_err(eager_out, ref_out) + floor
        assert max_err(dqkv, ref_dqkv) <= 2 * max_err(eager_dqkv, ref_dqkv) + floor
    assert_close(lse, lse_reference(qkv, cos, sin), atol=2e-2, rtol=0, name="lse")


@pytest.mark.parametrize("family, D, fused", [
    (None, 128, True), ("nvidia", 128, True), ("cdna", 128, True), ("rdna3", 128, False),
    ("rdna3", 64, True), (None, 48, False), ("nvidia", 16, False),
])  # fmt: skip
def test_head_dims_without_rows_fall_back_to_sdpa(monkeypatch, family, D, fused):
    from hrm_fast.kernels.dispatch import triton_on_cpu

    monkeypatch.setattr(attn, "_interpret_family", family)
    g = torch.Generator().manual_seed(D)
    qkv = torch.randn(1, 9, 3, D, generator=g, dtype=torch.float64)
    cos, sin = (t.double() for t in rope_tables(9, D))
    assert attn._triton_attention_on(qkv) is fused
    calls = []
    monkeypatch.setattr(
        attn, "rope_attention_sdpa", lambda *a: calls.append(1) or attn.rope_attention_ref(*a)
    )
    if not fused:  # the kernels are not launched: SDPA's result, whatever the head dim
        with triton_on_cpu():
            out = attn.rope_attention(qkv, cos, sin)
        assert calls and torch.equal(out, attn.rope_attention_ref(qkv, cos, sin))


def test_sdpa_fallback_matches_reference():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 37, 3 * 2, 32, generator=g, dtype=torch.float64)
    pos = torch.arange(64, dtype=torch.float64)[:, None] / 10.0 ** (torch.arange(32) / 32)
    cos, sin = pos.cos(), pos.sin()
    ref = attn.rope_attention_ref(qkv, cos, sin)
    assert (attn.rope_attention_sdpa(qkv, cos, sin) - ref).abs().max() < 1e-10


@pytest.mark.parametrize(
    "hip, gcn, family",
    [
        (None, None, "nvidia"),
        ("6.2", "gfx942:sramecc+:xnack-", "cdna"),
        ("6.2", "gfx1100", "rdna3"),
    ],
)
def test_rocm_device_family_constant_under_fullgraph_compile(monkeypatch, hip, gcn, family):
    from hrm_fast.kernels.dispatch import device_target_family

    monkeypatch.setattr(torch.version, "hip", hip)
    props = type("Props", (), {"gcnArchName": gcn})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    dev = torch.device("cuda", 0)
    assert device_target_family(dev) == family

    def pick(x):  # the launchers read the family while the fused step is being traced
        return x * (2.0 if device_target_family(dev) == "rdna3" else 3.0)

    torch._dynamo.reset()
    out = torch.compile(pick, fullgraph=True, backend="eager")(torch.ones(2))
    assert out.tolist() == ([2.0, 2.0] if family == "rdna3" else [3.0, 3.0])
