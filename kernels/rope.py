"""HRM's rotary position embedding in eager torch: the one definition of RoPE.

The model's reference path (``hrm_fast.layers``) and the attention family's references
(``rope_attention_ref``, ``rope_attention_sdpa``) apply it; the attention kernels apply the
same rotation in Triton. No Triton import here, so the reference path does not need it.
"""

from __future__ import annotations

import torch


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` for ``x`` ``[B, S, H, D]`` and ``cos``, ``sin``
    ``[S, D]``, computed in cos's dtype and rounded back to x's dtype (HRM's
    ``apply_rotary_pos_emb``).

    Written per half, ``[x1*c1 - x2*s1, x2*c2 + x1*s2]``: the same values bit for bit
    (``a + (-b)*c`` is ``a - b*c`` in IEEE arithmetic) without materialising ``rotate_half``,
    so an eager step makes fewer passes over q and k. Several heads' worth (q and k together)
    can go through one call: the rotation is per head.
    """
    dtype = x.dtype
    x = x.to(cos.dtype)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # over the heads
    c1, c2, s1, s2 = cos[..., :half], cos[..., half:], sin[..., :half], sin[..., half:]
    return torch.cat((x1 * c1 - x2 * s1, x2 * c2 + x1 * s2), dim=-1).to(dtype)
