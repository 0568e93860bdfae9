"""Each kernel family's forward and backward on the device against its ``*_ref`` in float64,
at a preset's shapes on a tiny batch, in fp32 (the bounds: ``hrm_fast.tolerances``)."""

from __future__ import annotations

import contextlib

import torch

from hrm_fast import tolerances as tol
from hrm_fast.config import RunConfig

CHECK_BATCH = 2  # examples per check: the shapes are the preset's, the batch is tiny


def interpreted(device: torch.device):
    """The Triton kernels on CPU tensors (interpreter), or nothing to do on a GPU."""
    if device.type == "cuda":
        return contextlib.nullcontext()
    from hrm_fast.kernels.dispatch import triton_on_cpu

    return triton_on_cpu()


def randn(*shape, gen, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def _backward_pair(fn, inputs: list[torch.Tensor], dy: torch.Tensor, device):
    """``fn`` run on ``device`` in fp32 and on the CPU in float64: (out, grads) of each.
    Each check's ``fn`` takes the kernel for fp32 inputs and the ``*_ref`` for float64."""
    results = []
    for dev, dtype in ((device, torch.float32), (torch.device("cpu"), torch.float64)):
        xs = [x.detach().to(dev, dtype).requires_grad_() for x in inputs]
        out = fn(*xs)
        out.backward(dy.to(dev, dtype))
        results.append((out.detach(), [x.grad for x in xs]))
    return results


def seq_with_puzzle(cfg: RunConfig) -> int:
    return cfg.seq_len + cfg.model.puzzle_emb_len


def check_attention(cfg, device, gen):
    from hrm_fast.kernels import attention as K
    from hrm_fast.layers import RotaryEmbedding

    m = cfg.model
    shape = family_shape("attention", cfg)
    rope = RotaryEmbedding(m.head_dim, shape[1], m.rope_theta)
    cos, sin = rope.cos_cached, rope.sin_cached
    qkv, do = randn(*shape, gen=gen), randn(*shape[:2], m.num_heads, m.head_dim, gen=gen)
    (out, (dqkv,)), (out64, (dqkv64,)) = _backward_pair(
        lambda x: (K.rope_attention if x.dtype == torch.float32 else K.rope_attention_ref)(
            x, cos.to(x.device, x.dtype), sin.to(x.device, x.dtype)
        ),
        [qkv],
        do,
        device,
    )
    return [
        tol.compare("out", out, out64, *tol.ATTENTION_OUT),
        tol.compare("d_qkv", dqkv, dqkv64, *tol.ATTENTION_DQKV),
    ]


def check_rms_norm(cfg, device, gen):
    from hrm_fast.kernels import rms_norm as K

    shape, eps = family_shape("rms_norm", cfg), cfg.model.rms_norm_eps
    x, r, dy = randn(*shape, gen=gen, scale=2), randn(*shape, gen=gen), randn(*shape, gen=gen)
    (y, (dx, dr)), (y64, (dx64, dr64)) = _backward_pair(
        lambda a, b: (K.add_rms_norm if a.dtype == torch.float32 else K.add_rms_norm_ref)(
            a, b, eps
        ),
        [x + 0.3, r],
        dy,
        device,
    )
    (s, grads), (s64, grads64) = _backward_pair(
        lambda a, b, c: (K.add3 if a.dtype == torch.float32 else K.add3_ref)(a, b, c),
        [x, r, dy],
        x,
        device,
    )
    return [
        tol.compare("y", y, y64, *tol.RMS_NORM_Y),
        tol.compare("dx", dx, dx64, *tol.RMS_NORM_DX),
        tol.compare("dr", dr, dr64, *tol.RMS_NORM_DX),
        tol.compare("add3", s, s64, *tol.ADD3),
        *(
            tol.compare(f"add3 d{i}", g, w, *tol.ADD3)
            for i, (g, w) in enumerate(zip(grads, grads64, strict=True))
        ),
    ]


def check_swiglu(cfg, device, gen):
    from hrm_fast.kernels import swiglu as K

    width = cfg.model.intermediate_size
    shape = family_shape("swiglu", cfg)
    gate_up, dy = randn(*shape, gen=gen, scale=3), randn(*shape[:2], width, gen=gen)
    (out, (dgu,)), (out64, (dgu64,)) = _backward_pair(
        lambda x: (K.swiglu if x.dtype == torch.float32 else K.swiglu_ref)(x), [gate_up], dy, device
    )
    return [
        tol.compare("out", out, out64, *tol.SWIGLU),
        tol.compare("d_gate", dgu[..., :width], dgu64[..., :width], *tol.SWIGLU),
        tol.compare("d_up", dgu[..., width:], dgu64[..., width:], *tol.SWIGLU),
    ]


def check_arc_loss(cfg, device, gen):
    from hrm_fast.loss import IGNORE, arc_loss_fused, arc_loss_ref

    B, S, V = CHECK_BATCH, cfg.seq_len, cfg.model.vocab_size
    logits = randn(B, S, V, gen=gen, scale=3)
    labels = torch.randint(0, V, (B, S), generator=gen, dtype=torch.int32)
    labels[torch.rand(B, S, generator=gen) < 0.25] = IGNORE
    q = randn(3, B, gen=gen)
    steps = torch.randint(1, cfg.model.halt_max_steps + 1, (B,), generator=gen, dtype=torch.int32)
    runs = []
    for fn, dev, dtype in ((arc_loss_fused, device, torch.float32), (arc_loss_ref, "cpu", None)):
        x = logits.detach().to(dev, dtype or torch.float64).requires_grad_()
        small = [t.to(dev) for t in (q[0], q[1], q[2].sigmoid())]
        loss, _ = fn(x, labels.to(dev), *small, steps.to(dev), cfg.loss, cfg.model.halt_max_steps)
        loss.backward()
        runs.append((loss.detach(), x.grad))
    (loss, dx), (loss64, dx64) = runs
    return [
        tol.compare("loss", loss, loss64, *tol.ARC_LOSS),
        tol.compare("d_logits", dx, dx64, *tol.ARC_LOSS_DLOGITS),
    ]


def check_augment(cfg, device, gen):
    import numpy as np

    from hrm_fast.grid_transforms import (
        augment_batch_ref,
        invert_batch_ref,
        random_offsets,
        sample_pool,
    )
    from hrm_fast.kernels.augment import augment_batch, invert_batch

    canvas, pairs = cfg.data.canvas, 4
    bank_in = torch.randint(0, 10, (pairs, canvas, canvas), generator=gen, dtype=torch.uint8)
    bank_out = torch.randint(0, 10, (pairs, canvas, canvas), generator=gen, dtype=torch.uint8)
    shapes = torch.randint(1, canvas + 1, (pairs, 4), generator=gen, dtype=torch.int32)
    pair = torch.randint(0, pairs, (CHECK_BATCH,), generator=gen)
    dihedral = torch.randint(0, 8, (CHECK_BATCH,), generator=gen)
    _, colour_maps = sample_pool(
        1, CHECK_BATCH, seed=int(torch.randint(0, 1 << 30, (1,), generator=gen))
    )
    cmap = torch.from_numpy(np.ascontiguousarray(colour_maps[0]))
    offset = random_offsets(shapes[pair], dihedral, canvas, True)
    args = [t.to(device) for t in (bank_in, bank_out, shapes, pair, dihedral, cmap, offset)]
    got = augment_batch(*args, canvas)
    want = augment_batch_ref(*[a.cpu() for a in args], canvas)
    grids, grid_shapes = invert_batch(got[1], args[4], args[5], canvas)
    want_grids, want_shapes = invert_batch_ref(want[1], dihedral, cmap, canvas)
    return [
        tol.compare("inputs", got[0], want[0], *tol.AUGMENT),
        tol.compare("labels", got[1], want[1], *tol.AUGMENT),
        tol.compare("inverted grids", grids, want_grids, *tol.AUGMENT),
        tol.compare("inverted shapes", grid_shapes, want_shapes, *tol.AUGMENT),
    ]


def family_shape(name: str, cfg: RunConfig) -> list[int]:
    """The shape a family is checked at: its main operand's, the step's batch."""
    m, seq = cfg.model, seq_with_puzzle(cfg)
    return {
        "attention": [CHECK_BATCH, seq, 3 * m.num_heads, m.head_dim],
        "rms_norm": [CHECK_BATCH, seq, m.hidden_size],
        "swiglu": [CHECK_BATCH, seq, 2 * m.intermediate_size],
        "arc_loss": [CHECK_BATCH, cfg.seq_len, m.vocab_size],
    }.get(name, [CHECK_BATCH, cfg.seq_len])


KERNEL_CHECKS = {
    "attention": check_attention,
    "rms_norm": check_rms_norm,
    "swiglu": check_swiglu,
    "arc_loss": check_arc_loss,
    "augment": check_augment,
}
