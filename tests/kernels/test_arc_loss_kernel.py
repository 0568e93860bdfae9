"""Fused ARC loss kernels (kernels/arc_loss.py) vs the float64 reference.

The Triton launchers run on CPU tensors under TRITON_INTERPRET=1 (or on CUDA with
TRITON_INTERPRET=0). Tolerances: fp32 logits are checked tightly against float64; for fp16
logits the kernel error must stay within 2x the error of the eager reference run on the same
fp16 input (plus a small fp32 floor), so it is no worse than eager.
"""

import pytest
import torch
from hrm_fast.kernels.arc_loss import (
    _alloc_stats_partials,
    _arc_loss_stats_bwd,
    _arc_loss_stats_fwd,
)

from hrm_fast.config import LossConfig
from hrm_fast.loss import (
    IGNORE,
    arc_loss_from_stats,
    arc_loss_fused,
    arc_loss_ref,
    arc_loss_stats_ref,
)
from hrm_fast.tolerances import ARC_LOSS, ARC_LOSS_DLOGITS
from tests.support.parity import assert_close, kernel_device, max_err

pytestmark = pytest.mark.interpret

V = 12  # ARC's vocabulary; the boards' are 11 (Sudoku) and 6 (maze)
# ARC's canvas and odd shapes, then Sudoku (81 cells, V 11) and maze (900 cells, V 6).
SHAPES = [(1, 901, V), (2, 37, V), (3, 130, V), (2, 81, 11), (1, 900, 6)]
DTYPES = [torch.float32, torch.float16]
# fp32 floors for sums over up to ~900 positions (ce_sum ~ 3 per position, p_sum <= 1).
FLOOR = {"ce_sum": 2e-4, "p_sum": 5e-5, "q_sum": 5e-5}
T = 0.25  # diversity temperature: the default; sharpening makes the q-histogram's gradient 4x


def make_inputs(B, S, dtype, seed, V=V):
    g = torch.Generator().manual_seed(seed)
    dev = kernel_device()
    x = (3 * torch.randn(B, S, V, generator=g)).to(dtype)
    y = torch.randint(0, V, (B, S), generator=g, dtype=torch.int32)
    y[torch.rand(B, S, generator=g) < 0.25] = IGNORE
    if B > 1:
        y[-1] = IGNORE  # an example with no valid position
    q = torch.randn(3, B, generator=g)
    steps = torch.randint(1, 10, (B,), generator=g, dtype=torch.int32)
    return x.to(dev), y.to(dev), q[0].to(dev), q[1].to(dev), q[2].sigmoid().to(dev), steps.to(dev)


def poisoned_partials(B, S, device, V=V):
    parts = _alloc_stats_partials(B, S, V, device)
    for t in parts:
        t.fill_(float("nan") if t.is_floating_point() else -7777)
    return parts


@pytest.mark.parametrize("stablemax", [False, True], ids=["softmax", "stablemax"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("B,S,V", SHAPES)
def test_stats_fwd(B, S, V, dtype, stablemax):
    x, y, *_ = make_inputs(B, S, dtype, seed=B * 1000 + S, V=V)
    got = _arc_loss_stats_fwd(x, y, stablemax, T, out=poisoned_partials(B, S, x.device, V))
    want = arc_loss_stats_ref(x.cpu().double(), y.cpu(), stablemax, T)
    eager = arc_loss_stats_ref(x.cpu(), y.cpu(), stablemax, T)
    for name in ("n_valid", "correct", "y_sum", "a_sum"):
        g = getattr(got, name)
        assert g.dtype == torch.int32, name
        assert torch.equal(g.cpu(), getattr(want, name)), name
    for name in ("ce_sum", "p_sum", "q_sum"):
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == torch.float32
        atol = FLOOR[name]
        if dtype != torch.float32:
            atol = 2 * max_err(getattr(eager, name), w) + FLOOR[name]
        assert_close(g, w, atol=atol, rtol=1e-6, name=name)
    if B > 1:  # the all-ignored example
        assert got.n_valid[-1] == 0 and got.ce_sum[-1] == 0 and got.p_sum[-1].abs().max() == 0
        assert got.q_sum[-1].abs().max() == 0


@pytest.mark.parametrize("stablemax", [False, True], ids=["softmax", "stablemax"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("B,S,V", SHAPES)
def test_fused_loss_and_dlogits(B, S, V, dtype, stablemax):
    cfg = LossConfig(
        ce="stablemax" if stablemax else "softmax", w_div=0.5, w_dist=0.3, div_temperature=T
    )
    x, y, qh, qc, tg, steps = make_inputs(B, S, dtype, seed=7 + B * 1000 + S, V=V)

    # Fused path, by hand: kernel stats -> penalty autograd -> bwd kernel.
    st = _arc_loss_stats_fwd(x, y, stablemax, T, out=poisoned_partials(B, S, x.device, V))
    ce = st.ce_sum.detach().requires_grad_()
    p = st.p_sum.detach().requires_grad_()
    q = st.q_sum.detach().requires_grad_()
    leaves = st._replace(ce_sum=ce, p_sum=p, q_sum=q)
    loss, metrics = arc_loss_from_stats(leaves, qh, qc, tg, steps, cfg, 8)
    loss.backward()
    assert q.grad.abs().max() > 0  # the diversity term really reaches the kernel
    dx = torch.full_like(x, float("nan"))
    _arc_loss_stats_bwd(x, y, ce.grad, p.grad, q.grad, stablemax, T, out=dx)
    assert dx.dtype == x.dtype

    def ref(xin):
        xin = xin.detach().cpu().requires_grad_()
        c = lambda t: t.cpu().to(xin.dtype if xin.dtype == torch.float64 else torch.float32)
        lo, m = arc_loss_ref(xin, y.cpu(), c(qh), c(qc), c(tg), steps.cpu(), cfg, 8)
        lo.backward()
        return lo, m, xin.grad

    loss64, m64, dx64 = ref(x.double())
    if dtype == torch.float32:
        l_tol, g_tol = ARC_LOSS[0], ARC_LOSS_DLOGITS[0]
    else:
        loss_e, _, dx_e = ref(x)  # eager on the fp16 input itself (grad rounded to fp16)
        l_tol = 2 * max_err(loss_e, loss64) + 2e-6
        g_tol = 2 * max_err(dx_e, dx64) + 1e-7
    assert_close(loss, loss64, atol=l_tol, rtol=1e-6, name="loss")
    assert_close(dx, dx64, atol=g_tol, rtol=1e-4, name="dlogits")
    for k in (
        "accuracy",
        "exact_accuracy",
        "unique_classes",
        "label_classes",
        "q_halt_accuracy",
        "valid",
    ):
        assert_close(metrics[k], m64[k], atol=1e-6, rtol=0, name=k)
    if B > 1:
        assert dx[-1].abs().max() == 0  # all-ignored example gets no gradient
    assert (dx[y == IGNORE] == 0).all()


def test_argmax_ties_pick_first_class():
    """Integer logits tie often: correct counts and argmax histogram use torch's first max."""
    x, y, *_ = make_inputs(2, 130, torch.float32, seed=13)
    x = x.clamp(-1, 1).round()
    got = _arc_loss_stats_fwd(x, y, False, T, out=poisoned_partials(2, 130, x.device))
    want = arc_loss_stats_ref(x.cpu().double(), y.cpu(), False)
    assert torch.equal(got.a_sum.cpu(), want.a_sum)
    assert torch.equal(got.correct.cpu(), want.correct)


@pytest.mark.parametrize("stablemax", [False, True], ids=["softmax", "stablemax"])
def test_deterministic(stablemax):
    x, y, *_ = make_inputs(3, 130, torch.float32, seed=11)
    a = _arc_loss_stats_fwd(x, y, stablemax, T)
    b = _arc_loss_stats_fwd(x, y, stablemax, T, out=poisoned_partials(3, 130, x.device))
    for t1, t2 in zip(a, b, strict=True):
        assert torch.equal(t1, t2)


def test_registered_op_autograd():
    """torch.ops.hrm_fast.arc_loss_stats + register_autograd give the reference gradient."""
    x, y, qh, qc, tg, steps = make_inputs(2, 37, torch.float32, seed=5)
    cfg = LossConfig(w_div=0.5, w_dist=0.3, div_temperature=T)
    xo = x.detach().clone().requires_grad_()
    from hrm_fast.loss import ArcStats

    st = ArcStats(*torch.ops.hrm_fast.arc_loss_stats(xo, y, False, T))
    loss, _ = arc_loss_from_stats(st, qh, qc, tg, steps, cfg, 8)
    loss.backward()
    xr = x.detach().cpu().double().requires_grad_()
    loss_r, _ = arc_loss_ref(xr, y.cpu(), qh.cpu(), qc.cpu(), tg.cpu(), steps.cpu(), cfg, 8)
    loss_r.backward()
    assert_close(loss, loss_r, atol=2e-6, rtol=1e-6, name="loss")
    assert_close(xo.grad, xr.grad, atol=1e-7, rtol=1e-3, name="dlogits")


def test_public_function_cpu_is_reference():
    x, y, qh, qc, tg, steps = make_inputs(2, 37, torch.float32, seed=3)
    if x.is_cuda:
        pytest.skip("CPU dispatch only")
    cfg = LossConfig()
    l1, m1 = arc_loss_fused(x, y, qh, qc, tg, steps, cfg, 8)
    l2, m2 = arc_loss_ref(x, y, qh, qc, tg, steps, cfg, 8)
    assert torch.equal(l1, l2)
    assert all(torch.equal(m1[k], m2[k]) for k in m2)
