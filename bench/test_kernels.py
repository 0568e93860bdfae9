"""Per kernel family: fused (Triton, CUDA only) vs eager reference, forward and forward+backward,
at the ``seed`` preset's shapes (B=20, S=901, hidden 256, H=8, D=32, I=768, V=12; bf16 on CUDA,
fp32 on CPU). ``--quick`` uses tiny shapes."""

from __future__ import annotations

import pytest
import torch
from hrm_fast.kernels import attention, rms_norm, swiglu

from hrm_fast.config import LossConfig
from hrm_fast.loss import arc_loss_fused, arc_loss_ref

SEED = dict(B=20, S=901, d=256, H=8, D=32, I=768, V=12)
QUICK = dict(B=2, S=65, d=64, H=2, D=32, I=128, V=12)

CPU_FUSED_SKIP = (
    "fused = Triton kernel, CUDA only: on CPU the public function falls back to the eager "
    "reference, which is benched as 'ref'"
)


def _shapes(quick: bool) -> dict:
    return QUICK if quick else SEED


def _dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device == "cuda" else torch.float32


def _rounds(device: str, quick: bool) -> tuple[int, int]:
    if quick:
        return 2, 1
    return (50, 10) if device == "cuda" else (3, 1)


def _rope(S: int, D: int, device: str):
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    f = torch.outer(torch.arange(S, dtype=torch.float32), inv)
    emb = torch.cat((f, f), dim=-1)
    return emb.cos().to(device), emb.sin().to(device)


def _make(family: str, k: dict, device: str, grad: bool):
    """(callable for the op, args) for one family; tensors require grad when ``grad``."""
    dt = _dtype(device)
    B, S, d, H, D, I, V = (k[x] for x in ("B", "S", "d", "H", "D", "I", "V"))
    g = torch.Generator().manual_seed(0)

    def t(*shape, dtype=dt, scale=1.0):
        x = (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)
        return x.requires_grad_(grad)

    if family == "attention":
        cos, sin = _rope(S, D, device)
        return (attention.rope_attention, attention.rope_attention_ref), (
            t(B, S, 3 * H, D),
            cos,
            sin,
        )
    if family == "add_rms_norm":
        return (rms_norm.add_rms_norm, rms_norm.add_rms_norm_ref), (t(B, S, d), t(B, S, d), 1e-5)
    if family == "add3":
        return (rms_norm.add3, rms_norm.add3_ref), (t(B, S, d), t(B, S, d), t(B, S, d))
    if family == "swiglu":
        return (swiglu.swiglu, swiglu.swiglu_ref), (t(B, S, 2 * I),)
    if family == "arc_loss":
        So = S - 1  # the loss sees the canvas only (puzzle tokens dropped)
        labels = torch.randint(0, V, (B, So), generator=g, dtype=torch.int32)
        labels[torch.rand(B, So, generator=g) < 0.5] = -100
        steps = torch.randint(1, 9, (B,), generator=g, dtype=torch.int32).to(device)
        q = [t(B, dtype=torch.float32) for _ in range(2)]
        args = (t(B, So, V), labels.to(device), *q, torch.rand(B, generator=g).to(device), steps,
                LossConfig(), 8)  # fmt: skip
        return (arc_loss_fused, arc_loss_ref), args
    raise ValueError(family)


FAMILIES = ["attention", "add_rms_norm", "add3", "swiglu", "arc_loss"]


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("impl", ["ref", "fused"])
@pytest.mark.parametrize("family", FAMILIES)
def test_kernel(record, benchmark, device, quick, family, impl, mode):
    if impl == "fused" and device != "cuda":
        pytest.skip(CPU_FUSED_SKIP)
    benchmark.group = f"kernel:{family}:{mode}"
    k = _shapes(quick)
    grad = mode == "fwd_bwd"
    (fused_fn, ref_fn), args = _make(family, k, device, grad)
    fn = fused_fn if impl == "fused" else ref_fn
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    with torch.no_grad():
        y = first(fn(*args))
    if not torch.isfinite(y.float()).all():
        pytest.fail(f"{family}/{impl}: non-finite output")
    if grad:
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)

        def call():
            for x in leaves:
                x.grad = None
            first(fn(*args)).backward(dy)

    else:

        def call():
            with torch.no_grad():
                fn(*args)

    rounds, warmup = _rounds(device, quick)
    record(
        call, rounds, warmup, kind="kernel", family=family, impl=impl, mode=mode,
        unit="calls/s", items_per_call=1, shapes=k, dtype=str(_dtype(device))[6:],
        preset="quick" if quick else "seed",
    )  # fmt: skip
