"""Reference ARC loss (hrm_fast.loss) against values worked out by hand.

Every expected number below is written out with ``math`` from closed-form softmax /
stablemax values (logits like [ln 3, 0] give softmax [3/4, 1/4]); nothing calls the code
under test to produce an expectation.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from hrm_fast.config import LossConfig
from hrm_fast.loss import IGNORE, arc_loss_ref, arc_loss_stats_ref, penalties_from_histograms

L2, L3 = math.log(2), math.log(3)
# div_temperature 1: the diversity term's sharpened histogram q equals the softmax one, p.
NO_PEN = LossConfig(w_div=0.0, w_dist=0.0, w_halt=0.0, div_temperature=1.0)


def sig(x):
    return 1 / (1 + math.exp(-x))


def bce(x, t):
    return -(t * math.log(sig(x)) + (1 - t) * math.log(1 - sig(x)))


def run(logits, labels, cfg=NO_PEN, q_halt=None, q_continue=None, target=None, steps=None,
        halt_max_steps=8):  # fmt: skip
    logits = torch.tensor(logits, dtype=torch.float64)
    labels = torch.tensor(labels, dtype=torch.int32)
    B = logits.shape[0]
    z = torch.zeros(B, dtype=torch.float64)
    qh = z if q_halt is None else torch.tensor(q_halt, dtype=torch.float64)
    qc = z if q_continue is None else torch.tensor(q_continue, dtype=torch.float64)
    tg = None if target is None else torch.tensor(target, dtype=torch.float64)
    st = torch.full((B,), 4, dtype=torch.int32) if steps is None else torch.tensor(steps).int()
    loss, m = arc_loss_ref(logits, labels, qh, qc, tg, st, cfg, halt_max_steps)
    return loss, {k: float(v) for k, v in m.items()}


def test_ce_softmax_with_ignored_and_empty_example():
    # ex0: [0,0,0] label 1 -> ln 3; [ln2,0,0] label 0 -> p0 = 2/4 -> ln 2; third ignored.
    # ex1: all ignored -> contributes 0 but counts in the batch mean.
    logits = [
        [[0, 0, 0], [L2, 0, 0], [5, -3, 1]],
        [[1, 2, 3], [0, 0, 9], [4, 4, 4]],
    ]
    labels = [[1, 0, IGNORE], [IGNORE] * 3]
    loss, m = run(logits, labels)
    ce0 = (L3 + L2) / 2
    assert m["lm_loss"] == pytest.approx(ce0 / 2, abs=1e-12)
    # q terms at q = 0, target None: BCE(0, exact) = ln 2 for both examples; q_continue 0.
    assert m["q_halt_loss"] == pytest.approx(L2, abs=1e-12)
    assert m["q_continue_loss"] == 0.0
    assert float(loss) == pytest.approx(ce0 / 2 + 0.5 * L2, abs=1e-12)


def test_ce_stablemax():
    # s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0): [0, 1, -1] -> s = [1, 2, 1/2], sum 7/2.
    # label 1 -> -ln(2 / 3.5) = ln 1.75; label 2 -> -ln(0.5 / 3.5) = ln 7.
    logits = [[[0, 1, -1], [0, 1, -1], [3, 3, 3]]]
    labels = [[1, 2, IGNORE]]
    _, m = run(logits, labels, cfg=LossConfig(ce="stablemax", w_div=0, w_dist=0, w_halt=0))
    assert m["lm_loss"] == pytest.approx((math.log(1.75) + math.log(7)) / 2, abs=1e-12)
    # softmax CE on the same tokens differs: the switch really selects stablemax.
    _, m_sm = run(logits, labels)
    lse = math.log(1 + math.e + math.exp(-1))
    assert m_sm["lm_loss"] == pytest.approx((lse - 1 + lse + 1) / 2, abs=1e-12)


def test_ce_fp32_and_bf16_inputs_compute_in_fp32():
    logits = torch.tensor([[[L2, 0.0, 0.0]]])
    labels = torch.tensor([[0]], dtype=torch.int32)
    z = torch.zeros(1)
    st = torch.tensor([4], dtype=torch.int32)
    for dt in (torch.float32, torch.bfloat16):
        x = logits.to(dt)
        loss, m = arc_loss_ref(x, labels, z, z, None, st, NO_PEN, 8)
        assert loss.dtype == torch.float32
        want = -math.log(math.exp(float(x[0, 0, 0])) / (math.exp(float(x[0, 0, 0])) + 2))
        assert float(m["lm_loss"]) == pytest.approx(want, abs=1e-6)


def test_distribution_kl():
    # V = 2, one example: [ln3, 0] -> p = [3/4, 1/4]; [0, 0] -> p = [1/2, 1/2]; labels 0, 0.
    # p_b = [5/8, 3/8], y_b = [1, 0]: KL = 1 * (ln 1 - ln 5/8) = ln 8/5.
    _, m = run([[[L3, 0], [0, 0]]], [[0, 0]])
    assert m["distribution"] == pytest.approx(math.log(8 / 5), abs=1e-12)
    # Diversity at T = 1: the same KL per example over log C (B = 1: no spread term).
    assert m["diversity"] == pytest.approx(math.log(8 / 5) / L2, abs=1e-12)


def test_diversity_cover_term():
    # Labels [0, 1] -> y = [1/2, 1/2]. Both tokens predict [3/4, 1/4]: KL(y || q) / ln 2.
    _, m = run([[[L3, 0], [L3, 0]]], [[0, 1]])
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert m["diversity"] == pytest.approx(kl / L2, abs=1e-12)
    assert m["distribution"] == pytest.approx(kl, abs=1e-12)


def test_diversity_uses_sharpened_histogram():
    # T = 1/2: softmax([ln 3, 0] / T) = [9/10, 1/10]; the distribution term keeps p = [3/4, 1/4].
    cfg = LossConfig(w_div=0.0, w_dist=0.0, w_halt=0.0, div_temperature=0.5)
    _, m = run([[[L3, 0], [L3, 0]]], [[0, 1]], cfg=cfg)
    assert m["diversity"] == pytest.approx(
        (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)) / L2, abs=1e-12
    )
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert m["distribution"] == pytest.approx(kl, abs=1e-12)


def test_diversity_spread_identical_predictions_is_positive():
    # Two inputs, same prediction [3/4, 1/4] everywhere; labels all 0 vs all 1.
    # y-bar = [1/2, 1/2], S_y = 1/2 (each example is 1/2 away in half-L1), S_q = 0.
    # Cover: KL = ln 4/3 and ln 4 over ln 2, averaged. diversity = that + 1/2.
    _, m = run([[[L3, 0], [L3, 0]], [[L3, 0], [L3, 0]]], [[0, 0], [1, 1]])
    cover = (math.log(4 / 3) + math.log(4)) / 2 / L2
    assert m["diversity"] == pytest.approx(cover + 0.5, abs=1e-12)


def test_diversity_spread_matching_labels_is_zero():
    # Labels: ex0 [0, 1] -> y0 = [1/2, 1/2]; ex1 [0, 0] -> y1 = [1, 0]. y-bar = [3/4, 1/4],
    # S_y = 1/2 (1/4 + 1/4) = 1/4. Predictions: ex0 [1/4, 3/4], ex1 [3/4, 1/4] -> q-bar
    # = [1/2, 1/2], S_q = 1/4 too: spread term 0. Cover: ex0 KL([1/2,1/2] || [1/4,3/4]),
    # ex1 KL([1, 0] || [3/4, 1/4]) = ln 4/3.
    _, m = run([[[0, L3], [0, L3]], [[L3, 0], [L3, 0]]], [[0, 1], [0, 0]])
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert m["diversity"] == pytest.approx((kl0 + math.log(4 / 3)) / 2 / L2, abs=1e-12)
    # KL(y-bar || p-bar) = 3/4 ln(3/2) + 1/4 ln(1/2)
    assert m["distribution"] == pytest.approx(
        0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-12
    )


def _collapsed(margin, labels, V=12, colour=2):
    """Logits that predict ``colour`` at every position, ``margin`` above every other class."""
    x = torch.zeros(labels.shape + (V,), dtype=torch.float64)
    x[..., colour] = margin
    return x


def test_diversity_rises_with_margin_of_collapsed_prediction():
    # The case: B = 8, labels of many colours, argmax the same colour everywhere. The
    # term must grow as the collapsed prediction gets more confident (margin 0.2 -> 1.0);
    # the old soft-histogram entropy hinge stayed flat here.
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(2, 12, (8, 60), generator=g, dtype=torch.int32)
    cfg = LossConfig()  # the shipped temperature
    divs = []
    for margin in [0.2 + 0.1 * i for i in range(9)]:
        stats = arc_loss_stats_ref(_collapsed(margin, labels), labels, False, cfg.div_temperature)
        div, _ = penalties_from_histograms(stats.p_sum, stats.q_sum, stats.y_sum, stats.n_valid)
        divs.append(float(div))
    steps = [b - a for a, b in zip(divs, divs[1:], strict=False)]
    assert min(steps) > 1e-3, divs
    assert divs[-1] > 1.5 * divs[0], divs


def test_diversity_ignores_confident_correct_predictions_of_many_colours():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(1, 12, (8, 60), generator=g, dtype=torch.int32)
    labels[:, :5] = IGNORE
    x = 8.0 * F.one_hot(labels.clamp_min(0).long(), 12).double()
    stats = arc_loss_stats_ref(x, labels, False, LossConfig().div_temperature)
    div, _ = penalties_from_histograms(stats.p_sum, stats.q_sum, stats.y_sum, stats.n_valid)
    assert float(div) < 1e-6
    # ... while the same labels with one colour predicted everywhere at margin 8 cost a lot.
    stats = arc_loss_stats_ref(_collapsed(8.0, labels), labels, False, 0.25)
    div_c, _ = penalties_from_histograms(stats.p_sum, stats.q_sum, stats.y_sum, stats.n_valid)
    assert float(div_c) > 1.0


def test_empty_example_excluded_from_histogram_means():
    # Same as the spread-positive case plus an all-ignored third example: unchanged penalties.
    logits = [[[L3, 0], [L3, 0]], [[L3, 0], [L3, 0]], [[9, 0], [0, 9]]]
    _, m = run(logits, [[0, 0], [1, 1], [IGNORE, IGNORE]])
    cover = (math.log(4 / 3) + math.log(4)) / 2 / L2
    assert m["diversity"] == pytest.approx(cover + 0.5, abs=1e-12)
    # y-bar = [1/2, 1/2], p-bar = [3/4, 1/4]
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert m["distribution"] == pytest.approx(kl, abs=1e-12)


def test_halt_penalty_masks():
    # min_steps 2, halt_max_steps 8. steps 1 (< 2: early), 2 (neither), 7 (neither), 8 (late).
    qh = [0.5, 1.0, -1.0, 2.0]
    qc = [0.0, 0.0, 0.3, -1.0]
    logits = [[[0.0, 0.0]]] * 4
    cfg = LossConfig(w_div=0.0, w_dist=0.0, w_halt=0.05, min_steps=2)
    loss, m = run(logits, [[1]] * 4, cfg=cfg, q_halt=qh, q_continue=qc, steps=[1, 2, 7, 8])
    want = (sig(0.5 - 0.0) + sig(-1.0 - 2.0)) / 4
    assert m["halt"] == pytest.approx(want, abs=1e-12)
    # p = [1/2, 1/2] everywhere, label 1: CE = ln 2; argmax (first max) 0 -> never exact.
    q_halt_loss = sum(bce(x, 0.0) for x in qh) / 4
    assert m["q_halt_loss"] == pytest.approx(q_halt_loss, abs=1e-12)
    assert float(loss) == pytest.approx(L2 + 0.5 * q_halt_loss + 0.05 * want, abs=1e-12)


def test_q_losses():
    # ex0 exact (argmax 0 == label 0), ex1 wrong.
    logits = [[[2.0, 0.0]], [[2.0, 0.0]]]
    qh, qc, tg = [1.5, -0.5], [0.2, -2.0], [0.7, 0.1]
    _, m = run(logits, [[0], [1]], q_halt=qh, q_continue=qc, target=tg)
    assert m["q_halt_loss"] == pytest.approx((bce(1.5, 1.0) + bce(-0.5, 0.0)) / 2, abs=1e-12)
    assert m["q_continue_loss"] == pytest.approx((bce(0.2, 0.7) + bce(-2.0, 0.1)) / 2, abs=1e-12)


def test_metrics():
    # V = 3. ex0: argmax 0, 1 at valid positions, labels 0, 1 -> exact. ex1: argmax 0, 0,
    # labels 0, 2 -> 1/2 correct. ex2: all ignored (argmax 2 must not count as a class).
    logits = [
        [[3, 0, 0], [0, 3, 0], [0, 0, 3]],
        [[3, 0, 0], [3, 0, 1], [0, 0, 3]],
        [[0, 0, 3], [0, 0, 3], [0, 0, 3]],
    ]
    labels = [[0, 1, IGNORE], [0, 2, IGNORE], [IGNORE] * 3]
    _, m = run(logits, labels, q_halt=[1.0, 0.5, -4.0])
    assert m["accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["exact_accuracy"] == pytest.approx(1 / 2)
    assert m["unique_classes"] == 2.0
    assert m["label_classes"] == 3.0  # labels 0, 1, 2; ignored positions do not count
    # ex0 exact & q >= 0: right; ex1 not exact & q >= 0: wrong; ex2 excluded.
    assert m["q_halt_accuracy"] == pytest.approx(1 / 2)
    assert m["correct"] == 3.0
    assert m["valid"] == 4.0


def test_loss_is_sum_of_weighted_terms():
    torch.manual_seed(0)
    cfg = LossConfig(w_div=0.3, w_dist=0.2, w_halt=0.7)
    B, S, V = 3, 11, 5
    x = torch.randn(B, S, V, dtype=torch.float64)
    y = torch.randint(0, V, (B, S), dtype=torch.int32)
    y[1, ::2] = IGNORE
    qh, qc, tg = torch.randn(B, dtype=torch.float64), torch.randn(B, dtype=torch.float64), None
    steps = torch.tensor([1, 3, 8], dtype=torch.int32)
    loss, m = arc_loss_ref(x, y, qh, qc, tg, steps, cfg, 8)
    want = (
        m["lm_loss"] + 0.5 * (m["q_halt_loss"] + m["q_continue_loss"]) + 0.3 * m["diversity"]
        + 0.2 * m["distribution"] + 0.7 * m["halt"]
    )  # fmt: skip
    assert float(loss) == pytest.approx(float(want), abs=1e-12)
    assert all(v.dim() == 0 for v in m.values())


@pytest.mark.parametrize("ce", ["softmax", "stablemax"])
def test_gradient_finite_and_compile_matches(ce):
    torch.manual_seed(1)
    cfg = LossConfig(ce=ce)
    B, S, V = 3, 37, 12
    x = (3 * torch.randn(B, S, V)).requires_grad_()
    y = torch.randint(0, V, (B, S), dtype=torch.int32)
    y[0, :7] = IGNORE
    y[2] = IGNORE
    qh = torch.randn(B, requires_grad=True)
    qc = torch.randn(B, requires_grad=True)
    tg = torch.rand(B)
    steps = torch.tensor([1, 4, 8], dtype=torch.int32)
    loss, m = arc_loss_ref(x, y, qh, qc, tg, steps, cfg, 8)
    loss.backward()
    for g in (x.grad, qh.grad, qc.grad):
        assert g is not None and torch.isfinite(g).all()
    assert x.grad[2].abs().max() == 0  # all-ignored example: no gradient
    assert x.grad[0, :7].abs().max() == 0
    assert x.grad[1].abs().max() > 0

    torch._dynamo.reset()
    compiled = torch.compile(arc_loss_ref, fullgraph=True)
    loss_c, m_c = compiled(x.detach(), y, qh.detach(), qc.detach(), tg, steps, cfg, 8)
    assert float(loss_c) == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-6)
    for k in m:
        assert float(m_c[k]) == pytest.approx(float(m[k]), rel=1e-5, abs=1e-6), k


def test_penalties_differentiable_wrt_soft_histograms():
    torch.manual_seed(2)
    B, C = 4, 5
    n = torch.tensor([7, 3, 0, 5], dtype=torch.int32)
    # label counts summing to n per example (the all-ignored example has none)
    y = torch.tensor(
        [[3, 0, 2, 1, 1], [0, 1, 1, 1, 0], [0] * 5, [1, 1, 1, 1, 1]], dtype=torch.int32
    )
    p = torch.softmax(torch.randn(B, C, dtype=torch.float64), -1) * n.double().unsqueeze(-1)
    q = torch.softmax(torch.randn(B, C, dtype=torch.float64), -1) * n.double().unsqueeze(-1)
    p.requires_grad_()
    q.requires_grad_()

    def f(p, q):
        div, dist = penalties_from_histograms(p, q, y, n)
        return div + 2 * dist

    assert torch.autograd.gradcheck(f, (p, q))


def test_unknown_ce_rejected():
    with pytest.raises(ValueError):
        run([[[0.0, 0.0]]], [[0]], cfg=LossConfig(ce="focal"))
