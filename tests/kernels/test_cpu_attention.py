"""The C++ CPU attention kernel (kernels/cpu_attention.cpp) against PyTorch's eager attention.

Judged as flash-attention judges low precision: against the float64 computation, the kernel's
error may be at most 2x eager PyTorch's own error in the same dtype on the same inputs (plus one
rounding of the dtype, for outputs eager gets exact). Eager's error is SDPA's, or in fp32 the
larger of SDPA's and that of plain fp32 matmuls and softmax: at a handful of keys SDPA's fp32
scores come out a few times more accurate than any sequential fp32 dot product (the kernel's
and ``q @ k.T``'s alike). Odd sequence lengths (padding lanes), every compiled head dim,
strided views, gradients through the registered autograd, torch.compile and thread counts.
"""

import math
import os

import pytest
import torch
from hrm_fast.kernels import cpu_attention as ca

SUPPORTED = ca.supported()
pytestmark = pytest.mark.skipif(not SUPPORTED, reason=f"CPU attention kernel: {ca.status()}")

DTYPES = [torch.float32] + ([torch.bfloat16] if (torch.bfloat16, 32) in SUPPORTED else [])
# One rounding of an O(1) value in the dtype: the slack for cases where SDPA is exact.
ULP = {torch.float32: 2e-7, torch.bfloat16: 8e-3}
SHAPES = [  # B, S, H, D
    (1, 1, 1, 16), (2, 37, 3, 32), (1, 33, 2, 48), (2, 81, 4, 64), (3, 5, 2, 96), (1, 40, 1, 128),
    (2, 130, 2, 16),
]  # fmt: skip


def make_qkv(B, S, H, D, dtype, seed, strided=False, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    if strided:  # a padded head axis and batch-second storage: only the head dim is contiguous
        base = torch.randn(S, B, 3 * H + 1, D, generator=g, dtype=torch.float64) * scale
        qkv = base.transpose(0, 1)[:, :, : 3 * H]
    else:
        qkv = torch.randn(B, S, 3 * H, D, generator=g, dtype=torch.float64) * scale
    return qkv.to(dtype)


def split(qkv):
    h = qkv.shape[2] // 3
    return qkv[:, :, :h], qkv[:, :, h : 2 * h], qkv[:, :, 2 * h :]


def forward_backward(fn, qkv, grad):
    x = qkv.detach().clone().requires_grad_(True)
    out = fn(*split(x))
    (out * grad.to(out.dtype)).sum().backward()
    return out.detach().double(), x.grad.double()


def max_err(got, want):
    return (got - want).abs().max().item()


def matmul_attention(q, k, v):
    """softmax(q k^T / sqrt(D)) v with plain matmuls, in the inputs' dtype; [B, S, H, D]."""
    scores = q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2) / math.sqrt(q.shape[-1])
    return (scores.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2)


def eager_errors(qkv, grad, want_out, want_grad):
    """Eager PyTorch's own (output, gradient) error in qkv's dtype; see the module docstring."""
    refs = [ca.attention_ref] + ([matmul_attention] if qkv.dtype == torch.float32 else [])
    errs = []
    for ref in refs:
        out, g = forward_backward(ref, qkv, grad)
        errs.append((max_err(out, want_out), max_err(g, want_grad)))
    return max(e[0] for e in errs), max(e[1] for e in errs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_forward_and_gradients_within_2x_sdpa_error(shape, dtype, strided):
    B, S, H, D = shape
    qkv = make_qkv(B, S, H, D, dtype, seed=S * D + H, strided=strided)
    grad = torch.randn(B, S, H, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want_out, want_grad = forward_backward(ca.attention_ref, qkv.double(), grad)
    eager_out, eager_grad = eager_errors(qkv, grad, want_out, want_grad)
    got_out, got_grad = forward_backward(ca.attention, qkv, grad)
    ulp = ULP[dtype]
    assert max_err(got_out, want_out) <= 2 * eager_out + ulp
    assert max_err(got_grad, want_grad) <= 2 * eager_grad + ulp * want_grad.abs().max().item()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_log_sum_exp_is_that_of_the_scaled_scores(dtype):
    B, S, H, D = 2, 45, 3, 32
    q, k, v = split(make_qkv(B, S, H, D, dtype, seed=3))
    out, lse = torch.ops.hrm_fast.cpu_attention(q, k, v)
    assert out.shape == (B, S, H, D) and out.is_contiguous() and out.dtype == dtype
    scores = torch.einsum("bshd,bthd->bhst", q.double(), k.double()) / math.sqrt(D)
    want = torch.logsumexp(scores, dim=-1)
    assert lse.dtype == torch.float32 and lse.shape == (B, H, S)
    assert max_err(lse.double(), want) < 1e-4 * want.abs().max().item()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compiled_call_is_the_eager_kernel_bit_for_bit(dtype):
    qkv = make_qkv(2, 29, 2, 32, dtype, seed=5)

    def f(x):
        h = x.shape[2] // 3
        return ca.attention(x[:, :, :h] * 1.5, x[:, :, h : 2 * h], x[:, :, 2 * h :])

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    assert torch.equal(compiled(qkv), f(qkv))


def test_rows_do_not_depend_on_the_thread_count():
    qkv = make_qkv(2, 67, 3, 64, DTYPES[-1], seed=7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ca.attention(*split(qkv))
        torch.set_num_threads(max(2, threads))
        many = ca.attention(*split(qkv))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_large_scores_stay_finite():
    # Scores of several hundred: the max subtraction must keep exp in range.
    qkv = make_qkv(1, 50, 2, 32, torch.float32, seed=9, scale=8.0)
    got = ca.attention(*split(qkv)).double()
    want = ca.attention_ref(*split(qkv.double()))
    eager = ca.attention_ref(*split(qkv)).double()
    assert torch.isfinite(got).all()
    assert max_err(got, want) <= 2 * max_err(eager, want) + ULP[torch.float32] * want.abs().max()


def test_a_second_load_reuses_the_cached_library():
    path = ca.status().rsplit("; ", 1)[1].rstrip(")")
    before = os.stat(path).st_mtime_ns
    ca._load.cache_clear()
    try:
        assert ca.supported() == SUPPORTED
        assert os.stat(path).st_mtime_ns == before
    finally:
        ca._load.cache_clear()
        ca._load()


def test_a_failed_build_falls_back_to_sdpa_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("HRM_FAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a compiler that fails every build
    ca._load.cache_clear()
    try:
        assert ca.supported() == frozenset()
        assert ca.status().startswith("sdpa (the CPU kernel did not build: false exited 1")
        assert not list(tmp_path.rglob("*.so"))
    finally:
        monkeypatch.undo()
        ca._load.cache_clear()
        ca._load()


def test_the_opt_out_says_so(monkeypatch):
    monkeypatch.setenv("HRM_FAST_CPU_ATTENTION", "0")
    ca._load.cache_clear()
    try:
        assert ca.supported() == frozenset()
        assert ca.status() == "sdpa (HRM_FAST_CPU_ATTENTION=0)"
    finally:
        monkeypatch.undo()
        ca._load.cache_clear()
        ca._load()
