"""The eager RoPE (``kernels/rope.py``) is HRM's ``x*cos + rotate_half(x)*sin`` bit for bit, with
q and k rotated together or apart; the gradient matches too."""

from __future__ import annotations

import pytest
import torch
from hrm_fast.kernels.rope import apply_rope


def _textbook(x, cos, sin):
    """HRM's apply_rotary_pos_emb: cast to cos's dtype, rotate, cast back."""
    x32 = x.to(cos.dtype)
    x1, x2 = x32.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x32 * cos.unsqueeze(-2) + rotated * sin.unsqueeze(-2)).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 5, 1, 2), (3, 37, 10, 32), (2, 17, 6, 64)])
def test_same_bits_as_the_textbook_formula(dtype, shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g).to(dtype)
    cos, sin = (
        torch.randn(shape[1], shape[3], generator=g),
        torch.randn(shape[1], shape[3], generator=g),
    )
    assert torch.equal(apply_rope(x, cos, sin), _textbook(x, cos, sin))
    h = shape[2] // 2 or 1  # q and k as one tensor: the rotation is per head
    both = apply_rope(x, cos, sin)
    assert torch.equal(torch.cat((apply_rope(x[:, :, :h], cos, sin),
                                  apply_rope(x[:, :, h:], cos, sin)), dim=2), both)  # fmt: skip


def test_gradient_matches_the_textbook_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 19, 4, 32, generator=g, dtype=torch.float64, requires_grad=True)
    cos, sin = (
        torch.randn(19, 32, generator=g, dtype=torch.float64),
        torch.randn(19, 32, generator=g, dtype=torch.float64),
    )
    w = torch.randn(2, 19, 4, 32, generator=g, dtype=torch.float64)
    (ours,) = torch.autograd.grad((apply_rope(x, cos, sin) * w).sum(), x)
    (want,) = torch.autograd.grad((_textbook(x, cos, sin) * w).sum(), x)
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
