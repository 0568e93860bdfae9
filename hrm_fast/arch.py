"""``cfg.model.arch`` -> the model class: the one place the choice is made."""

from __future__ import annotations

import torch

from hrm_fast.config import ModelConfig
from hrm_fast.errors import UserError


def model_class(arch: str):
    from hrm_fast.model import HRM
    from hrm_fast.trm import TRM

    classes = {"hrm": HRM, "trm": TRM}
    if arch not in classes:
        raise UserError(f"--arch: expected {' or '.join(classes)}, got {arch!r}")
    return classes[arch]


def build_model(
    cfg: ModelConfig,
    seq_len: int,
    num_puzzle_ids: int,
    batch_size: int,
    backend: str = "reference",
    forward_dtype: torch.dtype = torch.float32,
    attention: str = "kernel",
):
    """HRM or TRM: both take the same arguments and share the step/loss interface
    (``initial_carry``, ``forward``, ``forward_loss``). ``attention="sdpa"``: the fused backend
    with PyTorch's attention (the self-check's fallback when only the attention kernel fails)."""
    return model_class(cfg.arch)(
        cfg,
        seq_len,
        num_puzzle_ids,
        batch_size,
        backend=backend,
        forward_dtype=forward_dtype,
        attention=attention,
    )
