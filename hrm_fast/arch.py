"""``cfg.model.arch`` -> the model class: the one place the choice is made; and the shapes of the
tensors such a model saves, known before it is built."""

from __future__ import annotations

import torch

from hrm_fast.config import ModelConfig
from hrm_fast.errors import UserError
from hrm_fast.layers import swiglu_width


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


def expected_shapes(
    cfg: ModelConfig, num_puzzle_ids: int, seq_len: int | None = None
) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor an HRM or TRM with this config saves (scratch rows aside).

    TRM has one network (``L_level``); its ``mlp_t`` variant needs ``seq_len`` (the canvas
    cells; the puzzle-embedding positions are added here).
    """
    h, v, i = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    shapes = {
        "inner.H_init": (h,),
        "inner.L_init": (h,),
        "inner.embed_tokens.embedding_weight": (v, h),
        "inner.lm_head.weight": (v, h),
        "inner.q_head.weight": (2, h),
        "inner.q_head.bias": (2,),
    }
    if cfg.puzzle_emb_ndim > 0:
        shapes["inner.puzzle_emb.weights"] = (num_puzzle_ids, cfg.puzzle_emb_ndim)
    trm = cfg.arch == "trm"
    token_mlp = trm and cfg.mlp_t
    if token_mlp:
        if seq_len is None:
            raise ValueError("expected_shapes: TRM's mlp_t needs seq_len")
        s = seq_len + cfg.puzzle_emb_len
        i_t = swiglu_width(s, cfg.expansion)
    levels = (("L", cfg.L_layers),) if trm else (("H", cfg.H_layers), ("L", cfg.L_layers))
    for level, n in levels:
        for j in range(n):
            base = f"inner.{level}_level.layers.{j}."
            if token_mlp:
                shapes[base + "mlp_t.gate_up_proj.weight"] = (2 * i_t, s)
                shapes[base + "mlp_t.down_proj.weight"] = (s, i_t)
            else:
                shapes[base + "self_attn.qkv_proj.weight"] = (3 * h, h)
                shapes[base + "self_attn.o_proj.weight"] = (h, h)
            shapes[base + "mlp.gate_up_proj.weight"] = (2 * i, h)
            shapes[base + "mlp.down_proj.weight"] = (h, i)
    return shapes
