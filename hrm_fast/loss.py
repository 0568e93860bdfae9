"""ImprovedARCLoss on top of HRM's ACT loss: eager reference and metrics.

The loss is split in two so that the fused Triton path (``hrm_fast.kernels.arc_loss``) reuses
every line after the one pass over the logits:

* ``arc_loss_stats_ref(logits, labels, stablemax, div_temperature)`` -> per-example sums
  (``ArcStats``): CE sum, valid count, correct count, soft histogram ``p_sum = sum softmax``,
  sharpened histogram ``q_sum = sum softmax(logits / T)`` (a differentiable stand-in for the
  argmax histogram), label histogram ``y_sum``, argmax histogram ``a_sum``. The kernel computes
  exactly these.
* ``arc_loss_from_stats(stats, ...)`` -> (loss, metrics): the tiny ``[B]`` / ``[B, C]`` math.
  Gradients reach the logits only through ``stats.ce_sum``, ``stats.p_sum`` and ``stats.q_sum``.

Everything is masked arithmetic on fixed shapes (no ``.item()``, no boolean indexing), so the
reference compiles with ``torch.compile(fullgraph=True)`` and is CUDA-graph safe.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from hrm_fast.config import LossConfig

IGNORE = -100
_KL_EPS = 1e-8  # histogram clamp inside the KLs (docs/architecture.md)


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


def use_stablemax(cfg: LossConfig) -> bool:
    if cfg.ce not in ("softmax", "stablemax"):
        raise ValueError(f"LossConfig.ce must be 'softmax' or 'stablemax', got {cfg.ce!r}")
    return cfg.ce == "stablemax"


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
