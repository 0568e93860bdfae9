"""HRM's rotary position embedding in eager torch: the one definition of RoPE.

The model's reference path (``hrm_fast.layers``) and the attention family's references
(``rope_attention_ref``, ``rope_attention_sdpa``) apply it; the attention kernels apply the
same rotation in Triton. No Triton import here, so the reference path does not need it.
"""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` for ``x`` ``[B, S, H, D]`` and ``cos``, ``sin``
    ``[S, D]``, computed in cos's dtype and rounded back to x's dtype (HRM's
    ``apply_rotary_pos_emb``)."""
    dtype = x.dtype
    x = x.to(cos.dtype)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return (x * cos + rotate_half(x) * sin).to(dtype)
