"""AdamATan2 (hrm_fast/optim.py) against a float64 reference written from the update rule,
its decoupled weight decay, the bound atan2 puts on every step, and a bit-exact state round trip."""

import io
import math

import pytest
import torch

from hrm_fast.optim import AdamATan2
from tests.support.parity import assert_close

SHAPES = [(7, 5), (13,), (3, 1, 9)]  # odd sizes: no vector-width luck


def _reference_steps(params, grads_per_step, lr, betas, weight_decay):
    """The rule in float64, one element-wise formula per line (the package's CUDA kernel)."""
    beta1, beta2 = betas
    ps = [p.double().clone() for p in params]
    ms = [torch.zeros_like(p) for p in ps]
    vs = [torch.zeros_like(p) for p in ps]
    for t, grads in enumerate(grads_per_step, start=1):
        for p, m, v, g in zip(ps, ms, vs, grads, strict=True):
            g = g.double()
            p.mul_(1 - lr * weight_decay)
            m.copy_(beta1 * m + (1 - beta1) * g)
            v.copy_(beta2 * v + (1 - beta2) * g * g)
            m_hat = m / (1 - beta1**t)
            v_hat_sqrt = v.sqrt() / math.sqrt(1 - beta2**t)
            p.sub_(lr * torch.atan2(m_hat, v_hat_sqrt))
    return ps, ms, vs


def _run(params, grads_per_step, **kw):
    ps = [p.clone().requires_grad_(True) for p in params]
    opt = AdamATan2(ps, **kw)
    for grads in grads_per_step:
        for p, g in zip(ps, grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return ps, opt


def _random_problem(n_steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = []
    for step in range(n_steps):
        # Gradient scales that change from step to step and between tensors, and exact zeros.
        gs = [torch.randn(s, generator=gen) * 10.0 ** (step % 3 - i) for i, s in enumerate(SHAPES)]
        gs[0][0] = 0.0
        grads.append(gs)
    return params, grads


def test_matches_float64_reference_over_several_steps():
    lr, betas, wd = 1e-2, (0.9, 0.95), 0.1
    params, grads = _random_problem(8)
    ours, opt = _run(params, grads, lr=lr, betas=betas, weight_decay=wd)
    ref_p, ref_m, ref_v = _reference_steps(params, grads, lr, betas, wd)
    for i, (p, rp, rm, rv) in enumerate(zip(ours, ref_p, ref_m, ref_v, strict=True)):
        # fp32 rounding over 8 steps of size ~lr: ~1e-7; the steps themselves moved the weights
        # by ~lr each, 1e4 times the tolerance.
        assert_close(p, rp, atol=2e-6, rtol=0, name=f"param {i}")
        assert (rp - params[i].double()).abs().max() > 1e-2
        st = opt.state[p]
        assert_close(st["exp_avg"], rm, atol=0, rtol=1e-5, name=f"exp_avg {i}")
        assert_close(st["exp_avg_sq"], rv, atol=0, rtol=1e-5, name=f"exp_avg_sq {i}")
        assert st["step"].dtype == torch.float32 and st["step"].item() == 8


def test_tensor_lr_gives_the_float_lr_steps():
    """The trainer passes lr as a 0-d tensor under CUDA graphs (filled before each step)."""
    params, grads = _random_problem(4, seed=1)
    a, _ = _run(params, grads, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    b, _ = _run(params, grads, lr=torch.tensor(3e-3), betas=(0.9, 0.95), weight_decay=0.1)
    for x, y in zip(a, b, strict=True):
        assert_close(x, y, atol=1e-7, rtol=0)


def test_weight_decay_is_decoupled():
    """A zero gradient moves nothing but the decay (atan2(0, 0) = 0, no epsilon), and the decay
    never enters the moments."""
    params = [torch.randn(s, generator=torch.Generator().manual_seed(2)) for s in SHAPES]
    zeros = [[torch.zeros(s) for s in SHAPES]] * 5
    lr, wd = 1e-2, 0.5
    decayed, opt = _run(params, zeros, lr=lr, weight_decay=wd)
    for p, p0 in zip(decayed, params, strict=True):
        assert_close(p, p0.double() * (1 - lr * wd) ** 5, atol=1e-6, rtol=1e-6)
        assert torch.equal(opt.state[p]["exp_avg"], torch.zeros_like(p))
    still, _ = _run(params, zeros, lr=lr, weight_decay=0.0)
    for p, p0 in zip(still, params, strict=True):
        assert torch.equal(p, p0)
    _, grads = _random_problem(3, seed=3)
    _, with_wd = _run(params, grads, lr=lr, weight_decay=wd)
    _, no_wd = _run(params, grads, lr=lr, weight_decay=0.0)
    for sa, sb in zip(with_wd.state.values(), no_wd.state.values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_update_is_bounded_by_atan2():
    """No element moves by more than lr * pi/2 whatever the gradient's size; on the first step
    m_hat = g and sqrt(v_hat) = |g|, so every element with a gradient moves by exactly
    lr * pi/4."""
    lr = 1e-3
    gen = torch.Generator().manual_seed(4)
    p0 = torch.zeros(257)  # exact differences: no rounding of a weight near 1 in the way
    scale = 10.0 ** torch.randint(-15, 16, (257,), generator=gen).float()  # 1e-15 .. 1e15
    p = p0.clone().requires_grad_(True)
    opt = AdamATan2([p], lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    prev = p0.clone()
    for step in range(6):
        sign = torch.randn(257, generator=gen).sign()
        p.grad = sign * scale * (1e6 if step == 3 else 1.0)  # a spike, then back
        opt.step()
        moved = (p.detach() - prev).abs()
        assert torch.isfinite(p).all()
        assert moved.max() <= lr * math.pi / 2 * (1 + 1e-6), step
        if step == 0:
            assert_close(moved, torch.full_like(moved, lr * math.pi / 4), atol=0, rtol=1e-6)
        prev = p.detach().clone()


def test_state_dict_round_trip_is_bit_exact():
    params, grads = _random_problem(6, seed=5)
    straight, _ = _run(params, grads, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    first, opt = _run(params, grads[:3], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    resumed = [p.detach().clone().requires_grad_(True) for p in first]
    opt2 = AdamATan2(resumed, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    opt2.load_state_dict(torch.load(buf, map_location="cpu"))
    for gs in grads[3:]:
        for p, g in zip(resumed, gs, strict=True):
            p.grad = g.clone()
        opt2.step()
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)
        assert opt2.state[b]["step"].device == b.device


def test_step_is_one_graph_with_a_tensor_lr():
    """After the first step has made the state, step() traces as one graph under
    torch.compile(fullgraph=True): no host read, no branch on a tensor's value -- what CUDA-graph
    capture needs. The traced step gives the eager step's weights."""
    params, grads = _random_problem(2, seed=6)

    def first_step():
        ps = [p.clone().requires_grad_(True) for p in params]
        opt = AdamATan2(ps, lr=torch.tensor(1e-2), betas=(0.9, 0.95), weight_decay=0.1)
        for p, g in zip(ps, grads[0], strict=True):
            p.grad = g.clone()
        opt.step()
        for p, g in zip(ps, grads[1], strict=True):
            p.grad = g.clone()
        return ps, opt

    eager, opt = first_step()
    opt.step()
    traced, opt = first_step()
    torch.compile(opt.step, fullgraph=True, backend="eager")()
    for a, b in zip(eager, traced, strict=True):
        assert torch.equal(a, b)
    assert all(st["step"].item() == 2 for st in opt.state.values())


@pytest.mark.parametrize(
    "kw", [dict(lr=-1.0), dict(betas=(0.9, 1.0)), dict(weight_decay=-0.1)], ids=str
)
def test_bad_hyperparameters_rejected(kw):
    with pytest.raises(ValueError, match="AdamATan2"):
        AdamATan2([torch.zeros(2, requires_grad=True)], **kw)
