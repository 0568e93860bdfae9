"""Exponential moving average of the network weights (TRM's ``ema``; eval uses the average).

The shadow copies live on the model's device and are updated in place after every optimiser
step with one foreach lerp: no host sync, so the update sits inside the compiled / captured
step. The puzzle-embedding table is a buffer, not a parameter, and is not averaged (as in TRM).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, rate: float):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate must be in [0, 1), got {rate}")
        self.rate = rate
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- rate * shadow + (1 - rate) * weights."""
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.rate)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A plain {parameter name: tensor} dict (CPU), loadable with weights_only=True."""
        return {n: s.detach().cpu().clone() for n, s in zip(self.names, self.shadow, strict=True)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in state]
        if missing or len(state) != len(self.names):
            extra = sorted(set(state) - set(self.names))
            raise KeyError(f"EMA state does not match the model (missing {missing[:3]}, "
                           f"unexpected {extra[:3]})")  # fmt: skip
        for n, s in zip(self.names, self.shadow, strict=True):
            s.copy_(state[n])

    @contextlib.contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block, its own ones again after."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params], self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], saved)


def load_ema_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put a checkpoint's EMA weights into ``model``'s parameters (for eval and probe)."""
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in state]
    unexpected = [n for n in state if n not in params]
    if missing or unexpected:
        raise KeyError(f"EMA weights do not match the model (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]})")  # fmt: skip
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n])
