"""``hrm-fast check``'s kernel times: each fused kernel family measured on the GPU at a preset's
training shapes, beside the floor its datasheet roofline allows.

The floor is a LOWER BOUND on the time, from the same datasheet peaks as ``hrm_fast.roofline``:
max(FLOPs / peak FLOP/s, bytes / peak bandwidth), where bytes count every tensor the op takes
or returns crossing DRAM once (the backward: the output gradient, the saved inputs and the
input gradients) and FLOPs count only attention's matmuls (QK^T and PV forward, twice that
backward; the backward's recompute is left out, as in the roofline). ``of_roofline`` is
floor / measured: 1.0 would be at the roofline. A GPU without a datasheet entry gets the
times alone.
"""

from __future__ import annotations

import dataclasses
import statistics

import torch

from hrm_fast.config import RunConfig

REPEATS = 20  # timed runs per measurement, after WARMUP untimed ones; the median is kept
WARMUP = 3


@dataclasses.dataclass
class KernelCase:
    family: str
    shape: list[int]  # the main operand's
    run: object  # () -> output (a tensor whose .backward(grad) runs the backward)
    grad: torch.Tensor | None  # the output gradient; None: the output is a scalar loss
    inputs: list[torch.Tensor]  # the leaves whose .grad the backward fills
    fwd_bytes: int
    bwd_bytes: int
    fwd_flops: float = 0.0
    bwd_flops: float = 0.0


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def cases(cfg: RunConfig, device, dtype=torch.bfloat16) -> list[KernelCase]:
    """Each family's op at ``cfg``'s training shapes (batch ``cfg.train.batch_size``)."""
    from hrm_fast.kernels.attention import rope_attention
    from hrm_fast.kernels.rms_norm import add_rms_norm
    from hrm_fast.kernels.swiglu import swiglu
    from hrm_fast.layers import RotaryEmbedding
    from hrm_fast.loss import IGNORE, arc_loss_fused

    m, B = cfg.model, cfg.train.batch_size
    S = cfg.seq_len + m.puzzle_emb_len
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype).requires_grad_()

    out = []
    if not (m.arch == "trm" and m.mlp_t):
        qkv = randn(B, S, 3 * m.num_heads, m.head_dim)
        rope = RotaryEmbedding(m.head_dim, S, m.rope_theta)
        cos, sin = (t.to(device, dtype) for t in (rope.cos_cached, rope.sin_cached))
        o = torch.empty(B, S, m.num_heads, m.head_dim, device=device, dtype=dtype)
        flops = 4.0 * B * m.num_heads * S * S * m.head_dim
        out.append(KernelCase("attention", list(qkv.shape), lambda: rope_attention(qkv, cos, sin),
                              torch.randn_like(o), [qkv], _nbytes(qkv, o, cos, sin),
                              _nbytes(o, qkv, o, qkv), flops, 2 * flops))  # fmt: skip
    x, r = randn(B, S, m.hidden_size), randn(B, S, m.hidden_size)
    eps = m.rms_norm_eps
    out.append(KernelCase("rms_norm", list(x.shape), lambda: add_rms_norm(x, r, eps),
                          torch.randn_like(x), [x, r], _nbytes(x, r, x),
                          _nbytes(x, x, r, x, r)))  # fmt: skip
    gate_up = randn(B, S, 2 * m.intermediate_size)
    y = torch.empty(B, S, m.intermediate_size, device=device, dtype=dtype)
    out.append(KernelCase("swiglu", list(gate_up.shape), lambda: swiglu(gate_up),
                          torch.randn_like(y), [gate_up], _nbytes(gate_up, y),
                          _nbytes(y, gate_up, gate_up)))  # fmt: skip
    logits = torch.randn(B, cfg.seq_len, m.vocab_size, generator=gen).to(device, torch.float32)
    logits.requires_grad_()
    labels = torch.randint(0, m.vocab_size, (B, cfg.seq_len), generator=gen, dtype=torch.int32)
    labels[torch.rand(B, cfg.seq_len, generator=gen) < 0.25] = IGNORE
    labels = labels.to(device)
    q = torch.randn(3, B, generator=gen).to(device)
    steps = torch.randint(1, m.halt_max_steps + 1, (B,), generator=gen, dtype=torch.int32)
    steps = steps.to(device)

    def loss():
        value, _ = arc_loss_fused(logits, labels, q[0], q[1], q[2].sigmoid(), steps, cfg.loss,
                                  m.halt_max_steps)  # fmt: skip
        return value

    out.append(KernelCase("arc_loss", list(logits.shape), loss, None, [logits],
                          _nbytes(logits, labels), _nbytes(logits, logits)))  # fmt: skip
    return out


def _median_seconds(fn, device) -> float:
    """The median wall time of ``fn`` on the device (CUDA events; the host clock elsewhere)."""
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(REPEATS):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            import time

            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _fwd_bwd(case: KernelCase):
    def step():
        for t in case.inputs:
            t.grad = None
        y = case.run()
        y.backward(case.grad)

    return step


def floor_seconds(flops: float, nbytes: float, peak) -> float | None:
    if peak is None:
        return None
    return max(flops / peak.peak_flops, nbytes / peak.peak_bytes)


def measure(cfg: RunConfig, device, gpu_name: str | None, dtype=torch.bfloat16) -> dict:
    """Each family's median forward and backward time beside its floor; a JSON-ready dict."""
    from hrm_fast.roofline import gpu_peak

    device = torch.device(device)
    peak, note = None, None
    try:
        peak = gpu_peak(gpu_name or "")
    except KeyError as e:
        note = str(e.args[0])
    rows = []
    for case in cases(cfg, device, dtype):
        fwd = _median_seconds(case.run, device)  # the training forward: it saves for backward
        both = _median_seconds(_fwd_bwd(case), device)
        bwd = max(both - fwd, 0.0)
        row = {"family": case.family, "shape": case.shape, "dtype": str(dtype)[6:],
               "fwd_s": fwd, "bwd_s": bwd,
               "fwd_floor_s": floor_seconds(case.fwd_flops, case.fwd_bytes, peak),
               "bwd_floor_s": floor_seconds(case.bwd_flops, case.bwd_bytes, peak)}  # fmt: skip
        for part in ("fwd", "bwd"):
            floor, took = row[f"{part}_floor_s"], row[f"{part}_s"]
            row[f"{part}_of_roofline"] = floor / took if floor is not None and took > 0 else None
        rows.append(row)
    return {
        "gpu": gpu_name,
        "peak": None if peak is None else dataclasses.asdict(peak),
        "note": note,
        "batch_size": cfg.train.batch_size,
        "repeats": REPEATS,
        "label": "measured medians; floors are datasheet-roofline lower bounds, not measured",
        "kernels": rows,
    }


def format_times(result: dict) -> str:
    """The table ``hrm-fast check`` prints."""

    def us(s):
        return "-" if s is None else f"{s * 1e6:.1f}"

    def pct(f):
        return "-" if f is None else f"{100 * f:.0f}%"

    lines = [
        f"kernel times at batch {result['batch_size']} (median of {result['repeats']}, "
        f"microseconds; floor: datasheet roofline of {result['gpu']})",
        f"{'family':<10}{'fwd':>9}{'floor':>9}{'of roof':>9}{'bwd':>9}{'floor':>9}{'of roof':>9}",
    ]
    for r in result["kernels"]:
        lines.append(
            f"{r['family']:<10}{us(r['fwd_s']):>9}{us(r['fwd_floor_s']):>9}"
            f"{pct(r['fwd_of_roofline']):>9}{us(r['bwd_s']):>9}{us(r['bwd_floor_s']):>9}"
            f"{pct(r['bwd_of_roofline']):>9}"
        )
    if result["note"]:
        lines.append(f"no floors: {result['note']}")
    return "\n".join(lines)
