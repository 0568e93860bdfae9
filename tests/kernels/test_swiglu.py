"""Parity tests for kernels/swiglu.py (silu(gate) * up from the fused gate_up projection).

Launchers run on CPU tensors under TRITON_INTERPRET=1. Truth is the float64 reference;
low-precision results must be within 2x of eager PyTorch's own error at that precision.
"""

import pytest
import torch
from hrm_fast.kernels import swiglu as K

from hrm_fast.compile_report import preset_shape
from hrm_fast.tolerances import SWIGLU
from tests.support.aot import aot_resource_usage
from tests.support.parity import INTERPRET, assert_close, kernel_device, max_err

pytestmark = pytest.mark.interpret

# (leading shape, I): rows 1, 37, 130 (= 2 x 65); I = the seed's 768 plus odd widths.
# TRM at ARC (fp32 only): I = 1536 (hidden 512) and its mlp_t sequence-axis width 2560 (S = 916).
# The last two: TRM mlp_t across a Sudoku's sequence (81 -> width 256; 81 + 16 -> 512).
SHAPES = [((1,), 80), ((37,), 300), ((2, 65), 768), ((37,), 80), ((3,), 1536), ((2,), 2560),
          ((2, 64), 256), ((3, 16), 512)]  # fmt: skip


def _inputs(lead, I, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    dev = kernel_device()
    # Spread of gate values covering silu's saturated tails and its minimum near -1.28.
    gate_up = (torch.randn(*lead, 2 * I, generator=g) * 3).to(dtype).to(dev)
    dy = torch.randn(*lead, I, generator=g).to(dtype).to(dev)
    return gate_up, dy


def _truth(gate_up, dy):
    gu = gate_up.detach().double().cpu().requires_grad_()
    out = K.swiglu_ref(gu)
    out.backward(dy.double().cpu())
    return out.detach(), gu.grad


def _run(gate_up, dy):
    out = torch.full((*gate_up.shape[:-1], gate_up.shape[-1] // 2), float("nan"))
    out = out.to(gate_up.dtype).to(gate_up.device)
    got = K._swiglu_fwd(gate_up, out=out)
    assert got is out
    dgu = torch.full_like(gate_up, float("nan"))
    got_d = K._swiglu_bwd(dy, gate_up, dgate_up=dgu)
    assert got_d is dgu
    return out, dgu


@pytest.mark.parametrize("lead,I", SHAPES)
def test_swiglu_fp32(lead, I):
    gate_up, dy = _inputs(lead, I, torch.float32, seed=I + len(lead))
    out, dgu = _run(gate_up, dy)
    out64, dgu64 = _truth(gate_up, dy)
    assert_close(out, out64, *SWIGLU, name="out")
    assert_close(dgu[..., :I], dgu64[..., :I], *SWIGLU, name="d_gate")
    assert_close(dgu[..., I:], dgu64[..., I:], *SWIGLU, name="d_up")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("lead,I", SHAPES[:3])
def test_swiglu_low_precision(lead, I, dtype):
    gate_up, dy = _inputs(lead, I, dtype, seed=11 * I)
    out, dgu = _run(gate_up, dy)
    out64, dgu64 = _truth(gate_up, dy)
    gue = gate_up.detach().cpu().requires_grad_()
    oute = K.swiglu_ref(gue)
    oute.backward(dy.cpu())
    # The interpreter rounds fp32 -> bf16 toward zero (a GPU rounds to nearest): twice the
    # worst-case output rounding there.
    f = 4.0 if (INTERPRET and dtype == torch.bfloat16) else 2.0
    for name, got, eager, truth in (
        ("out", out, oute, out64),
        ("d_gate", dgu[..., :I], gue.grad[..., :I], dgu64[..., :I]),
        ("d_up", dgu[..., I:], gue.grad[..., I:], dgu64[..., I:]),
    ):
        assert torch.isfinite(got).all(), name
        k_err, e_err = max_err(got, truth), max_err(eager, truth)
        assert k_err <= f * e_err + 1e-6, (
            f"{name}: kernel err {k_err:.3e} > {f} x eager {e_err:.3e}"
        )


def test_swiglu_autograd_wiring():
    gate_up, dy = _inputs((37,), 80, torch.float32, seed=2)
    gate_up.requires_grad_()
    out = torch.ops.hrm_fast.swiglu(gate_up)
    out.backward(dy)
    out64, dgu64 = _truth(gate_up, dy)
    assert_close(out, out64, 1e-5, 1e-5, "out")
    assert_close(gate_up.grad, dgu64, 1e-5, 1e-5, "d_gate_up")


def test_swiglu_strided_input():
    # A non-contiguous gate_up (e.g. a slice) is made contiguous by the launcher.
    gate_up, dy = _inputs((37,), 80, torch.float32, seed=4)
    wide = torch.cat([gate_up, gate_up], 0)[::2]
    assert not wide.is_contiguous()
    assert_close(K._swiglu_fwd(wide), K.swiglu_ref(wide.double()), 1e-5, 1e-5, "strided")


def test_public_cpu_is_reference():
    gate_up, _ = _inputs((37,), 300, torch.float32, seed=5)
    gate_up = gate_up.cpu()
    assert torch.equal(K.swiglu(gate_up), K.swiglu_ref(gate_up))
    g, u = gate_up.chunk(2, -1)
    assert_close(K.swiglu(gate_up), torch.nn.functional.silu(g) * u, 1e-6, 1e-6, "vs eager")
    gr = gate_up.clone().requires_grad_()
    K.swiglu(gr).sum().backward()
    assert gr.grad is not None and torch.isfinite(gr.grad).all()


def test_ops_registered():
    for name in ("swiglu", "swiglu_bwd"):
        assert hasattr(torch.ops.hrm_fast, name), name


@pytest.mark.parametrize("preset", ["seed", "paper"])
def test_aot_specs_match_kernels(preset):
    specs = K.aot_specs(preset_shape(preset))
    I = 768 if preset == "seed" else 1536
    assert [s.name for s in specs] == ["swiglu_fwd", "swiglu_bwd"]
    for s in specs:
        assert list(s.signature) == list(s.fn.arg_names), s.name
        assert {k for k, v in s.signature.items() if v == "constexpr"} == set(s.constexprs)
        assert s.constexprs["I"] == I and "bf16" in s.note


@pytest.mark.static
def test_aot_compiles_without_spills():
    rows = aot_resource_usage("hrm_fast.kernels.swiglu")
    assert len(rows) == 2 * 2 * 3
    for row in rows:
        assert row["STACK"] == 0 and row["LOCAL"] == 0, row
        assert row["REG"] <= 128, row
