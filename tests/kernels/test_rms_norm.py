"""Parity tests for kernels/rms_norm.py (fused residual add + weightless RMSNorm, add3).

Launchers run on CPU tensors under TRITON_INTERPRET=1 (see conftest). Truth is the float64
reference; low-precision results must be within 2x of eager PyTorch's own error at that
precision (flash-attention's rule), with eager = the reference run in that dtype.
"""

import pytest
import torch
from hrm_fast.kernels import rms_norm as K

from hrm_fast.compile_report import preset_shape
from hrm_fast.tolerances import RMS_NORM_DX, RMS_NORM_Y
from tests.support.aot import aot_resource_usage
from tests.support.parity import INTERPRET, assert_close, kernel_device, max_err

pytestmark = pytest.mark.interpret

EPS = 1e-5
# (leading shape, N): rows 1, 37, 130 (= 2 x 65); N = HRM's 256 plus odd widths, and 916: TRM's
# mlp_t normalises over the sequence axis (ARC: 900 cells + 16 puzzle positions).
# The last two: TRM mlp_t's norm over a Sudoku's sequence axis (81; 81 + 16 puzzle positions).
SHAPES = [((1,), 96), ((37,), 256), ((2, 65), 200), ((37,), 1000), ((3,), 916), ((2, 8), 81),
          ((3, 16), 97)]  # fmt: skip
LOW = [torch.float16, torch.bfloat16]


def _low_factor(dtype):
    # The interpreter rounds fp32 -> bf16 toward zero (a GPU rounds to nearest), which doubles
    # the kernel's worst-case output rounding; fp16 is rounded to nearest in both.
    return 4.0 if (INTERPRET and dtype == torch.bfloat16) else 2.0


def _inputs(lead, N, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    dev = kernel_device()
    # Non-zero mean and a per-row scale so rstd varies across rows.
    scale = torch.rand(*lead, 1, generator=g) * 3 + 0.1
    x = (torch.randn(*lead, N, generator=g) * scale + 0.3).to(dtype).to(dev)
    r = (torch.randn(*lead, N, generator=g) * scale).to(dtype).to(dev)
    dy = torch.randn(*lead, N, generator=g).to(dtype).to(dev)
    return x, r, dy


def _truth(x, r, dy):
    """float64 forward, rstd and the gradient shared by x and r."""
    x64 = x.detach().double().cpu().requires_grad_()
    r64 = r.detach().double().cpu().requires_grad_()
    y = K.add_rms_norm_ref(x64, r64, EPS)
    y.backward(dy.double().cpu())
    s = (x64 + r64).detach()
    rstd = torch.rsqrt(s.square().mean(-1) + EPS)
    assert torch.equal(x64.grad, r64.grad)
    return y.detach(), rstd, x64.grad


def _run(x, r, dy):
    nan = float("nan")
    out = torch.full_like(x, nan)
    rstd = torch.full(x.shape[:-1], nan, dtype=torch.float32, device=x.device)
    y, rs = K._add_rms_norm_fwd(x, r, EPS, out=out, rstd=rstd)
    assert y is out and rs is rstd
    dx = torch.full_like(x, nan)
    got = K._add_rms_norm_bwd(dy, y, rs, dx=dx)
    assert got is dx
    return y, rs, dx


@pytest.mark.parametrize("lead,N", SHAPES)
def test_add_rms_norm_fp32(lead, N):
    x, r, dy = _inputs(lead, N, torch.float32, seed=N + len(lead))
    y, rstd, dx = _run(x, r, dy)
    y64, rstd64, dx64 = _truth(x, r, dy)
    assert_close(y, y64, *RMS_NORM_Y, name="y")
    assert_close(rstd, rstd64, atol=0, rtol=2e-6, name="rstd")
    assert_close(dx, dx64, *RMS_NORM_DX, name="dx")


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("lead,N", SHAPES)
def test_add_rms_norm_low_precision(lead, N, dtype):
    x, r, dy = _inputs(lead, N, dtype, seed=7 * N)
    y, rstd, dx = _run(x, r, dy)
    y64, rstd64, dx64 = _truth(x, r, dy)
    # Eager at this precision: the reference in `dtype` (x + r rounded, fp32 statistics).
    xe = x.detach().cpu().requires_grad_()
    re_ = r.detach().cpu().requires_grad_()
    ye = K.add_rms_norm_ref(xe, re_, EPS)
    ye.backward(dy.cpu())
    f = _low_factor(dtype)
    for name, got, eager, truth in (("y", y, ye, y64), ("dx", dx, xe.grad, dx64)):
        assert torch.isfinite(got).all(), name
        k_err, e_err = max_err(got, truth), max_err(eager, truth)
        assert k_err <= f * e_err + 1e-6, (
            f"{name}: kernel err {k_err:.3e} > {f} x eager {e_err:.3e}"
        )
    # Statistics are fp32 from the unrounded sum: rstd is fp32-accurate whatever the dtype.
    assert_close(rstd, torch.rsqrt(((x.double() + r.double()) ** 2).mean(-1) + EPS), 0, 2e-6)


def test_add_rms_norm_grad_is_shared_once():
    # Autograd wiring through the registered op: dx == dr, and x + x accumulates to 2 dx.
    x, r, dy = _inputs((37,), 96, torch.float32, seed=1)
    x.requires_grad_()
    r.requires_grad_()
    y, rstd = torch.ops.hrm_fast.add_rms_norm(x, r, EPS)
    assert not rstd.requires_grad
    y.backward(dy)
    _, _, dx64 = _truth(x, r, dy)
    assert_close(x.grad, dx64, 1e-5, 1e-5, "x.grad")
    assert_close(r.grad, dx64, 1e-5, 1e-5, "r.grad")
    z = x.detach().clone().requires_grad_()
    y2, _ = torch.ops.hrm_fast.add_rms_norm(z, z, EPS)
    y2.backward(dy)
    z64 = z.detach().double().requires_grad_()
    K.add_rms_norm_ref(z64, z64, EPS).backward(dy.double())
    assert_close(z.grad, z64.grad, 1e-5, 1e-5, "grad of x + x")


@pytest.mark.parametrize("has_c", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_add3(dtype, has_c):
    g = torch.Generator().manual_seed(3 + has_c)
    dev = kernel_device()
    shape = (2, 37, 200)
    a, b, c = (torch.randn(*shape, generator=g).to(dtype).to(dev) for _ in range(3))
    c = c if has_c else None
    out = torch.full_like(a, float("nan"))
    got = K._add3_fwd(a, b, c, out=out)
    assert got is out
    truth = a.double() + b.double() + (c.double() if has_c else 0)
    if dtype == torch.float32:
        assert_close(got, truth, atol=1e-6, rtol=1e-6, name="add3")
    else:
        # One rounding of the fp32 sum: at most half an ulp, never worse than eager's two.
        eager = K.add3_ref(a.cpu(), b.cpu(), c.cpu() if has_c else None)
        assert max_err(got, truth) <= max_err(eager, truth)
        assert_close(got, truth.to(dtype), atol=0, rtol=2**-10, name="add3 fp16")


def test_add3_autograd_identity():
    a, b, c = (torch.randn(5, 96, requires_grad=True) for _ in range(3))
    gout = torch.randn(5, 96)
    torch.ops.hrm_fast.add3(a, b, c).backward(gout)
    for t in (a, b, c):
        assert torch.equal(t.grad, gout)
    a.grad = None
    torch.ops.hrm_fast.add3(a, a, None).backward(gout)  # H-level z_H + z_L with aliasing
    assert torch.equal(a.grad, 2 * gout)


def test_public_cpu_is_reference():
    x, r, _ = _inputs((37,), 256, torch.float32, seed=5)
    x, r = x.cpu(), r.cpu()
    assert torch.equal(K.add_rms_norm(x, r, EPS), K.add_rms_norm_ref(x, r, EPS))
    assert torch.equal(K.add3(x, r, x), K.add3_ref(x, r, x))
    assert torch.equal(K.add3(x, r), x + r)
    # The reference path is differentiable (the CPU trainer uses it).
    xg = x.clone().requires_grad_()
    K.add_rms_norm(xg, r).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_ops_registered():
    for name in ("add_rms_norm", "add_rms_norm_bwd", "add3"):
        assert hasattr(torch.ops.hrm_fast, name), name
    schema = str(torch.ops.hrm_fast.add_rms_norm.default._schema)
    assert "(Tensor, Tensor)" in schema, schema
    assert "Tensor? c" in str(torch.ops.hrm_fast.add3.default._schema)


def test_too_wide_rejected():
    x = torch.zeros(2, 1025)
    with pytest.raises(ValueError, match="up to 1024"):
        K._add_rms_norm_fwd(x, x)


@pytest.mark.parametrize("preset", ["seed", "paper"])
def test_aot_specs_match_kernels(preset):
    specs = K.aot_specs(preset_shape(preset))
    N = 256 if preset == "seed" else 512
    assert {s.name for s in specs} == {"add_rms_norm_fwd", "add_rms_norm_bwd", "add3", "add2"}
    for s in specs:
        assert list(s.signature) == list(s.fn.arg_names), s.name
        assert {k for k, v in s.signature.items() if v == "constexpr"} == set(s.constexprs)
        assert "bf16" in s.note
        if "rms" in s.name:
            assert s.constexprs["N"] == N and s.constexprs["BLOCK_N"] >= N


@pytest.mark.static
def test_aot_compiles_without_spills():
    rows = aot_resource_usage("hrm_fast.kernels.rms_norm")
    assert len(rows) == 2 * 4 * 3
    for row in rows:
        assert row["STACK"] == 0 and row["LOCAL"] == 0, row
        assert row["REG"] <= 128, row
