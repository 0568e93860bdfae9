"""The optimisers and the learning-rate schedule: AdamATan2, HRM's sparse sign-SGD for the puzzle
embeddings, and ``lr_at``.

AdamATan2 in plain torch: Adam with ``atan2`` in place of the division by ``sqrt(v) + eps``.

TRM's and HRM's official runs train with the ``adam-atan2`` package, a CUDA extension that many
users cannot build. Its update, per element, at step t (counted from 1):

    p <- p * (1 - lr * weight_decay)                  decoupled weight decay on the old weights
    m <- beta1 * m + (1 - beta1) * g
    v <- beta2 * v + (1 - beta2) * g^2
    p <- p - lr * atan2(m / (1 - beta1^t), sqrt(v) / sqrt(1 - beta2^t))

There is no epsilon (Everett et al. 2024, "Scaling Exponents Across Parameterizations and
Optimizers"): ``atan2(0, 0) = 0``, and because the second argument is never negative no element
moves by more than ``lr * pi / 2`` (plus the decay) in one step. The package applies no scale
constants (the paper's a = b = 1), and neither does this class.

``step()`` never reads a value back to the host and branches only on the configuration, so it can
run inside a captured CUDA graph: the step counters are float32 tensors beside their parameters
(as the package keeps them), and ``lr`` may be a 0-d tensor the trainer fills before each step.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer


class AdamATan2(Optimizer):
    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
    ):
        if not isinstance(lr, torch.Tensor) and not lr >= 0.0:
            raise ValueError(f"AdamATan2: lr must be >= 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamATan2: betas must be in [0, 1), got {betas}")
        if not weight_decay >= 0.0:
            raise ValueError(f"AdamATan2: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, weight_decay = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamATan2 does not support sparse gradients")
                state = self.state[p]
                if not state:  # the first step (in a CUDA-graph warm-up, before capture)
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                _update(
                    p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                    lr, beta1, beta2, weight_decay,
                )  # fmt: skip
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # Optimizer.load_state_dict leaves "step" on the device it was loaded to (the CPU for a
        # checkpoint read with map_location="cpu"); a CPU counter would be baked into a captured
        # graph as a constant, so it goes back beside its parameter.
        for p, state in self.state.items():
            if "step" in state:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def _update(p, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, weight_decay) -> None:
    step.add_(1)
    # Bias corrections as device tensors: no host read of the step count.
    bias_correction1 = 1 - torch.pow(beta1, step)
    bias_correction2_sqrt = (1 - torch.pow(beta2, step)).sqrt()
    if weight_decay != 0:
        p.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt)
    update = torch.atan2(exp_avg / bias_correction1, denom)
    p.sub_(update.mul_(lr))


class SparseSignSGD:
    """HRM's sign-SGD with decoupled weight decay for the puzzle embeddings, static shapes.

    The batch's rows sit in ``local_weights`` (a leaf). Gradients of rows that share a puzzle id
    are summed with a [B, B] match matrix instead of ``unique`` (which syncs the host); rows with
    the same id then write identical values, so the scatter is deterministic.
    """

    def __init__(self, emb, weight_decay: float, device, gather=None):
        self.emb, self.weight_decay = emb, weight_decay
        self.lr = torch.zeros((), device=device)  # filled from the host each step
        # Data parallel: (ids, grad) -> every rank's (ids, grad), so all ranks update alike.
        self.gather = gather

    @torch.no_grad()
    def step(self) -> None:
        grad = self.emb.local_weights.grad
        if grad is None:
            return
        ids = self.emb.local_ids
        if self.gather is not None:
            ids, grad = self.gather(ids, grad)
        ids = ids.long()
        same = (ids[:, None] == ids[None, :]).to(grad.dtype)
        g = same @ grad
        w = self.emb.weights[ids]
        w = w * (1.0 - self.lr * self.weight_decay) - self.lr * torch.sign(g)
        self.emb.weights.index_copy_(0, ids, w)

    def zero_grad(self) -> None:
        if self.emb.local_weights.grad is not None:
            self.emb.local_weights.grad.zero_()


def lr_at(step: int, base: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio * base`` (HRM's schedule)."""
    if step < warmup:
        return base * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return base * (
        min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    )
