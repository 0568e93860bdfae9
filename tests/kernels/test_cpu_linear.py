"""fp32 linear layers through oneDNN (kernels/cpu_linear.py) on AMD CPUs with AVX-512.

oneDNN sums the K products in another order than MKL, so neither is the reference: every
element of the output and of both gradients must be within the textbook bound of an fp32 dot
product of length K against float64, |err| <= gamma_K * sum_k |x_k w_k| with
gamma_K = K u / (1 - K u), u = 2^-24. The bound is not vacuous: bf16 inputs break it.
"""

import pytest
import torch
from hrm_fast.kernels import cpu_linear

from hrm_fast.layers import CastedLinear, use_onednn_linear

USE, WHY = cpu_linear.status()
pytestmark = pytest.mark.skipif(not USE, reason=f"fp32 CPU matmul: {WHY}")

U = 2.0**-24


def within_fp32_bound(got, a, b):
    """got ~ a @ b (float64 a, b): every element inside the fp32 dot-product bound."""
    k = a.shape[-1]
    gamma = k * U / (1 - k * U)
    err = (got.double() - a @ b).abs()
    return bool((err <= gamma * (a.abs() @ b.abs())).all())


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (37, 64, 96), (130, 512, 300), (901, 256, 1536)])
def test_forward_and_gradients_within_the_fp32_dot_product_bound(m, k, n):
    g = torch.Generator().manual_seed(m + k + n)
    x = torch.randn(m, k, generator=g, requires_grad=True)
    w = torch.randn(n, k, generator=g, requires_grad=True)
    dy = torch.randn(m, n, generator=g)
    y = cpu_linear.linear(x, w)
    y.backward(dy)
    x64, w64, dy64 = x.detach().double(), w.detach().double(), dy.double()
    assert within_fp32_bound(y, x64, w64.t())
    assert within_fp32_bound(x.grad, dy64, w64)
    assert within_fp32_bound(w.grad, dy64.t(), x64)


def test_the_bound_sees_bf16_products():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 256, generator=g), torch.randn(128, 256, generator=g)
    rounded = x.bfloat16().float() @ w.bfloat16().float().t()
    assert not within_fp32_bound(rounded, x.double(), w.double().t())


def test_leading_dims_and_compile_match_eager_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 45, 64, generator=g), torch.randn(96, 64, generator=g)
    eager = cpu_linear.linear(x, w)
    assert eager.shape == (2, 45, 96)
    torch._dynamo.reset()
    compiled = torch.compile(cpu_linear.linear, fullgraph=True)(x, w)
    assert torch.equal(compiled, eager)


def test_only_fp32_cpu_layers_switch():
    layer = CastedLinear(64, 32, bias=False)
    model = torch.nn.Sequential(layer)
    assert use_onednn_linear(model, torch.device("cpu"), torch.bfloat16).startswith("bf16")
    assert not layer.onednn
    assert use_onednn_linear(model, torch.device("cpu"), torch.float32) == WHY
    assert layer.onednn
    x = torch.randn(3, 64)
    ref = x.double() @ layer.weight.detach().double().t()
    assert within_fp32_bound(layer(x), x.double(), layer.weight.detach().double().t())
    assert torch.allclose(layer(x).double(), ref, rtol=1e-5, atol=1e-5)
