"""ImprovedARCLoss on top of HRM's ACT loss: the loss composition, reference and fused.

The loss is split in two so that the fused path reuses every line after the one pass over
the logits:

* the pass (``hrm_fast.kernels.arc_loss``): per-example sums (``ArcStats``): CE sum, valid
  count, correct count, soft histogram ``p_sum = sum softmax``, sharpened histogram
  ``q_sum = sum softmax(logits / T)`` (a differentiable stand-in for the argmax histogram),
  label histogram ``y_sum``, argmax histogram ``a_sum``; ``arc_loss_stats_ref`` in eager torch,
  ``arc_loss_stats`` in one Triton kernel.
* ``arc_loss_from_stats(stats, ...)`` -> (loss, metrics): the tiny ``[B]`` / ``[B, C]`` math
  (CE mean, ACT Q losses, penalties). Gradients reach the logits only through
  ``stats.ce_sum``, ``stats.p_sum`` and ``stats.q_sum``.

``arc_loss_ref`` and ``arc_loss_fused`` are the two compositions. Everything is masked
arithmetic on fixed shapes (no ``.item()``, no boolean indexing), so the reference compiles with
``torch.compile(fullgraph=True)`` and is CUDA-graph safe.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hrm_fast.config import LossConfig
from hrm_fast.kernels.arc_loss import (
    IGNORE,  # noqa: F401 - the loss's label convention, read from here by callers
    ArcStats,
    arc_loss_stats,
    arc_loss_stats_ref,
    softmax_cross_entropy,  # noqa: F401 - the probe's per-position CE
)

_KL_EPS = 1e-8  # histogram clamp inside the KLs (docs/architecture.md)


def use_stablemax(cfg: LossConfig) -> bool:
    if cfg.ce not in ("softmax", "stablemax"):
        raise ValueError(f"LossConfig.ce must be 'softmax' or 'stablemax', got {cfg.ce!r}")
    return cfg.ce == "stablemax"


# --- tiny [B, C] math shared by the reference and the fused path ---------------------------


def _kl(y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Elementwise terms of KL(y || p) (sum them over classes); 0 log 0 = 0, p clamped."""
    return torch.xlogy(y, y) - y * torch.log(p.clamp_min(_KL_EPS))


def _masked_mean(v: torch.Tensor, m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Mean of v over examples where m (0/1, same leading dim) is set; 0 when none is."""
    m = m.view(m.shape + (1,) * (v.dim() - 1))
    return (v * m).sum(0) / n


def penalties_from_histograms(
    p_sum: torch.Tensor,
    q_sum: torch.Tensor,
    y_sum: torch.Tensor,
    n_valid: torch.Tensor,
    batch_gather=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(diversity, distribution) from per-example SUMS over valid positions.

    ``p_sum``: softmax histogram (distribution term); ``q_sum``: the sharpened histogram
    ``sum softmax(logits / T)`` (diversity term). Differentiable w.r.t. both. Examples with no
    valid position are left out of every batch mean. ``batch_gather`` (data parallel) gathers
    every rank's rows first, so the batch statistics are the global batch's.

    Diversity (docs/safeguards.md) is ``mean_b KL(y_b || q_b) / log C + relu(S_y - S_q)``: each
    example's soft-argmax histogram must cover the colours of its labels, and examples must
    differ from each other as much as their labels do. A collapsed prediction (one colour
    everywhere) leaves the other label colours with ``q_c ~ exp(-margin / T)``, so the term
    grows with the collapsed prediction's margin; confident correct predictions give q_b = y_b
    and cost nothing. (The soft histogram ``p`` cannot see argmax collapse while predictions
    are soft: its entropy stays above the labels' and the old entropy hinge stayed at 0.)
    """
    if batch_gather is not None:
        p_sum, q_sum = batch_gather(p_sum), batch_gather(q_sum)
        y_sum, n_valid = batch_gather(y_sum), batch_gather(n_valid)
    dt = p_sum.dtype
    C = p_sum.shape[-1]
    n = n_valid.to(dt)
    has = (n > 0).to(dt)
    n_ex = has.sum().clamp_min(1)
    per = n.clamp_min(1).unsqueeze(-1)
    p, q, y = p_sum / per, q_sum / per, y_sum.to(dt) / per
    p_bar = _masked_mean(p, has, n_ex)
    y_bar = _masked_mean(y, has, n_ex)
    q_bar = _masked_mean(q, has, n_ex)

    # KL(y-bar || p-bar), 0 log 0 = 0.
    distribution = _kl(y_bar, p_bar).sum()

    cover = _masked_mean(_kl(y, q).sum(-1), has, n_ex) / math.log(C)
    s_y = _masked_mean(0.5 * (y - y_bar).abs().sum(-1), has, n_ex)
    s_q = _masked_mean(0.5 * (q - q_bar).abs().sum(-1), has, n_ex)
    diversity = cover + torch.relu(s_y - s_q)
    return diversity, distribution


def arc_loss_from_stats(
    stats: ArcStats,
    q_halt: torch.Tensor,
    q_continue: torch.Tensor,
    target_q_continue: torch.Tensor | None,
    steps: torch.Tensor,
    cfg: LossConfig,
    halt_max_steps: int,
    batch_gather=None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    dt = stats.p_sum.dtype
    n = stats.n_valid.to(dt)
    has = (n > 0).to(dt)
    n_ex = has.sum().clamp_min(1)
    correct = stats.correct.to(dt)

    lm_loss = (stats.ce_sum.to(dt) / n.clamp_min(1)).mean()
    exact = (stats.correct == stats.n_valid) & (stats.n_valid > 0)

    qh = q_halt.to(dt)
    qc = q_continue.to(dt)
    q_halt_loss = F.binary_cross_entropy_with_logits(qh, exact.to(dt))
    if target_q_continue is None:
        q_continue_loss = torch.zeros((), dtype=dt, device=qh.device)
    else:
        q_continue_loss = F.binary_cross_entropy_with_logits(qc, target_q_continue.to(dt))

    diversity, distribution = penalties_from_histograms(
        stats.p_sum, stats.q_sum, stats.y_sum, stats.n_valid, batch_gather
    )
    a_sum = stats.a_sum if batch_gather is None else batch_gather(stats.a_sum)
    y_sum = stats.y_sum if batch_gather is None else batch_gather(stats.y_sum)

    early = (steps < cfg.min_steps).to(dt)
    late = (steps >= halt_max_steps).to(dt)
    halt = (early * torch.sigmoid(qh - qc) + late * torch.sigmoid(qc - qh)).mean()

    loss = (
        lm_loss
        + 0.5 * (q_halt_loss + q_continue_loss)
        + cfg.w_div * diversity
        + cfg.w_dist * distribution
        + cfg.w_halt * halt
    )

    with torch.no_grad():
        exact_f = exact.to(dt)
        metrics = {
            "loss": loss.detach(),
            "lm_loss": lm_loss.detach(),
            "q_halt_loss": q_halt_loss.detach(),
            "q_continue_loss": q_continue_loss.detach(),
            "diversity": diversity.detach(),
            "distribution": distribution.detach(),
            "halt": halt.detach(),
            # Per-example means over examples with >= 1 valid position.
            "accuracy": (has * correct / n.clamp_min(1)).sum() / n_ex,
            "exact_accuracy": exact_f.sum() / n_ex,
            "unique_classes": (a_sum.sum(0) > 0).to(dt).sum(),
            # The labels' own count: what unique_classes would be for a perfect prediction.
            "label_classes": (y_sum.sum(0) > 0).to(dt).sum(),
            "q_halt_accuracy": (has * ((qh >= 0) == exact).to(dt)).sum() / n_ex,
            "correct": correct.sum(),
            "valid": n.sum(),
        }
    return loss, metrics


def arc_loss_ref(
    logits: torch.Tensor,
    labels: torch.Tensor,
    q_halt: torch.Tensor,
    q_continue: torch.Tensor,
    target_q_continue: torch.Tensor | None,
    steps: torch.Tensor,
    cfg: LossConfig,
    halt_max_steps: int,
    batch_gather=None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ImprovedARCLoss + ACT Q losses (docs/architecture.md, "Loss"). Eager reference.

    ``batch_gather`` (data parallel): the batch-level penalties and ``unique_classes`` are
    computed over every rank's examples (``hrm_fast.distributed``)."""
    stats = arc_loss_stats_ref(logits, labels, use_stablemax(cfg), cfg.div_temperature)
    return arc_loss_from_stats(
        stats, q_halt, q_continue, target_q_continue, steps, cfg, halt_max_steps, batch_gather
    )


def arc_loss_fused(
    logits: torch.Tensor,
    labels: torch.Tensor,
    q_halt: torch.Tensor,
    q_continue: torch.Tensor,
    target_q_continue: torch.Tensor | None,
    steps: torch.Tensor,
    cfg: LossConfig,
    halt_max_steps: int,
    batch_gather=None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``arc_loss_ref`` with the statistics from the fused kernel (one Triton pass on CUDA)."""
    stats = arc_loss_stats(logits, labels, use_stablemax(cfg), cfg.div_temperature)
    return arc_loss_from_stats(
        stats, q_halt, q_continue, target_q_continue, steps, cfg, halt_max_steps, batch_gather
    )
