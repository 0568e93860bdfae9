"""The Hierarchical Reasoning Model, ``hrm_act_v1`` (Wang et al. 2025; sapientinc/HRM).

Read top to bottom: layers, the post-norm block, the H/L reasoning modules, the inner model
with its 1-step gradient, and the ACT wrapper. Parameter and buffer names follow the official
code, so official state dicts load as they are (see ``hrm_fast.convert``).

Two backends share the parameters: ``reference`` is HRM's eager torch code; ``fused`` routes the
memory-bound work (RoPE + attention, residual + RMSNorm, SwiGLU, the injection add) through the
Triton kernels in ``hrm_fast.kernels``. On CPU tensors the fused ops fall back to their eager
references, so both backends run anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hrm_fast.config import ModelConfig


def trunc_normal_init_(
    tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0
):
    """JAX-style truncated normal whose *actual* std is ``std`` (as HRM's common.py)."""
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        sqrt2 = math.sqrt(2)
        a, b = math.erf(lower / sqrt2), math.erf(upper / sqrt2)
        z = (b - a) / 2
        c = (2 * math.pi) ** -0.5
        pdf_u, pdf_l = c * math.exp(-0.5 * lower**2), c * math.exp(-0.5 * upper**2)
        comp_std = std / math.sqrt(
            1 - (upper * pdf_u - lower * pdf_l) / z - ((pdf_u - pdf_l) / z) ** 2
        )
        tensor.uniform_(a, b)
        tensor.erfinv_()
        tensor.mul_(sqrt2 * comp_std)
        tensor.clip_(lower * comp_std, upper * comp_std)
    return tensor


# --------------------------------------------------------------------------- layers


class CastedLinear(nn.Module):
    """fp32 master weights, cast to the activation dtype at use (HRM's mixed precision)."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(
            trunc_normal_init_(torch.empty(out_features, in_features), std=in_features**-0.5)
        )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    def __init__(self, num: int, dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(
            trunc_normal_init_(torch.empty(num, dim), std=init_std)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


class CastedSparseEmbedding(nn.Module):
    """Puzzle-identifier embeddings, trained by sign-SGD on the rows a batch touches.

    ``weights`` holds every puzzle's row; in training the batch's rows are copied into the leaf
    ``local_weights`` whose gradient the sparse optimiser reads (HRM's design), so the step never
    materialises a dense gradient for the whole table.
    """

    def __init__(self, num: int, dim: int, batch_size: int, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.register_buffer("weights", torch.zeros(num, dim), persistent=True)  # zero init
        self.register_buffer(
            "local_weights", torch.zeros(batch_size, dim).requires_grad_(True), persistent=False
        )
        self.register_buffer(
            "local_ids", torch.zeros(batch_size, dtype=torch.int32), persistent=False
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[ids].to(self.cast_to)
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights.to(self.cast_to)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, max_positions: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    dtype = q.dtype
    q, k = q.to(cos.dtype), k.to(cos.dtype)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return (q * cos + rotate_half(q) * sin).to(dtype), (k * cos + rotate_half(k) * sin).to(dtype)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """HRM's weightless RMSNorm: fp32 statistics, output in the input dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


class Ops:
    """The memory-bound ops of a block; ``fused`` swaps in the Triton kernels."""

    def __init__(self, backend: str):
        if backend not in ("reference", "fused"):
            raise ValueError(f"backend must be 'reference' or 'fused', got {backend!r}")
        self.backend = backend
        if backend == "fused":
            from hrm_fast.kernels.attention import rope_attention
            from hrm_fast.kernels.rms_norm import add3, add_rms_norm
            from hrm_fast.kernels.swiglu import swiglu

            self.attention, self.add_rms_norm, self.swiglu = rope_attention, add_rms_norm, swiglu
            self.add3 = add3
        else:
            self.attention, self.add_rms_norm = _attention_reference, _add_rms_norm_reference
            self.swiglu, self.add3 = _swiglu_reference, _add3_reference


def _attention_reference(qkv, cos, sin):
    b, s, h3, d = qkv.shape
    h = h3 // 3
    q, k, v = qkv[:, :, :h], qkv[:, :, h : 2 * h], qkv[:, :, 2 * h :]
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _add_rms_norm_reference(x, r, eps):
    return rms_norm(x + r, eps)


def _swiglu_reference(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def _add3_reference(a, b, c=None):
    return a + b if c is None else a + b + c


# --------------------------------------------------------------------------- blocks


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: Ops):
        super().__init__()
        self.ops, self.num_heads, self.head_dim = ops, cfg.num_heads, cfg.head_dim
        self.qkv_proj = CastedLinear(cfg.hidden_size, 3 * cfg.hidden_size, bias=False)
        self.o_proj = CastedLinear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, cos_sin, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        qkv = self.qkv_proj(x).view(b, s, 3 * self.num_heads, self.head_dim)
        out = self.ops.attention(qkv, *cos_sin)
        return self.o_proj(out.reshape(b, s, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: Ops):
        super().__init__()
        self.ops = ops
        self.gate_up_proj = CastedLinear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = CastedLinear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.ops.swiglu(self.gate_up_proj(x)))


class Block(nn.Module):
    """Post-norm transformer block: norm after each residual add, no learnt norm weights."""

    def __init__(self, cfg: ModelConfig, ops: Ops):
        super().__init__()
        self.ops, self.eps = ops, cfg.rms_norm_eps
        self.self_attn = Attention(cfg, ops)
        self.mlp = SwiGLU(cfg, ops)

    def forward(self, cos_sin, h: torch.Tensor) -> torch.Tensor:
        h = self.ops.add_rms_norm(h, self.self_attn(cos_sin, h), self.eps)
        return self.ops.add_rms_norm(h, self.mlp(h), self.eps)


class ReasoningModule(nn.Module):
    def __init__(self, cfg: ModelConfig, num_layers: int, ops: Ops):
        super().__init__()
        self.ops = ops
        self.layers = nn.ModuleList(Block(cfg, ops) for _ in range(num_layers))

    def forward(self, h, injection, cos_sin, extra=None):
        h = self.ops.add3(h, injection, extra)  # input injection by addition
        for layer in self.layers:
            h = layer(cos_sin, h)
        return h


# --------------------------------------------------------------------------- inner model


@dataclass
class InnerCarry:
    z_H: torch.Tensor
    z_L: torch.Tensor


class HRMInner(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        seq_len: int,
        num_puzzle_ids: int,
        batch_size: int,
        forward_dtype: torch.dtype,
        ops: Ops,
    ):
        super().__init__()
        self.cfg, self.seq_len, self.forward_dtype = cfg, seq_len, forward_dtype
        self.embed_scale = math.sqrt(cfg.hidden_size)
        self.embed_tokens = CastedEmbedding(
            cfg.vocab_size, cfg.hidden_size, 1 / self.embed_scale, forward_dtype
        )
        self.lm_head = CastedLinear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.q_head = CastedLinear(cfg.hidden_size, 2, bias=True)
        self.puzzle_emb_len = cfg.puzzle_emb_len
        if cfg.puzzle_emb_ndim > 0:
            self.puzzle_emb = CastedSparseEmbedding(
                num_puzzle_ids, cfg.puzzle_emb_ndim, batch_size, forward_dtype
            )
        self.rotary_emb = RotaryEmbedding(
            cfg.head_dim, seq_len + self.puzzle_emb_len, cfg.rope_theta
        )
        self.H_level = ReasoningModule(cfg, cfg.H_layers, ops)
        self.L_level = ReasoningModule(cfg, cfg.L_layers, ops)
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(cfg.hidden_size), std=1))
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(cfg.hidden_size), std=1))
        with torch.no_grad():  # Q starts near "never halt" so ACT bootstraps from full depth
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)

    def input_embeddings(self, inputs: torch.Tensor, puzzle_ids: torch.Tensor) -> torch.Tensor:
        emb = self.embed_tokens(inputs)
        if self.cfg.puzzle_emb_ndim > 0:
            pe = self.puzzle_emb(puzzle_ids)
            pad = self.puzzle_emb_len * self.cfg.hidden_size - pe.shape[-1]
            if pad > 0:
                pe = F.pad(pe, (0, pad))
            emb = torch.cat((pe.view(-1, self.puzzle_emb_len, self.cfg.hidden_size), emb), dim=-2)
        return self.embed_scale * emb

    def empty_carry(self, batch_size: int, device=None) -> InnerCarry:
        shape = (batch_size, self.seq_len + self.puzzle_emb_len, self.cfg.hidden_size)
        return InnerCarry(
            z_H=torch.zeros(shape, dtype=self.forward_dtype, device=device),
            z_L=torch.zeros(shape, dtype=self.forward_dtype, device=device),
        )

    def reset_carry(self, reset: torch.Tensor, carry: InnerCarry) -> InnerCarry:
        r = reset.view(-1, 1, 1)
        return InnerCarry(
            z_H=torch.where(r, self.H_init.to(self.forward_dtype), carry.z_H),
            z_L=torch.where(r, self.L_init.to(self.forward_dtype), carry.z_L),
        )

    def forward(self, carry: InnerCarry, inputs: torch.Tensor, puzzle_ids: torch.Tensor):
        cos_sin = (self.rotary_emb.cos_cached, self.rotary_emb.sin_cached)
        x = self.input_embeddings(inputs, puzzle_ids)
        H, L = self.H_level, self.L_level
        # All but the last L and H updates run without a graph: HRM's 1-step gradient.
        with torch.no_grad():
            z_H, z_L = carry.z_H, carry.z_L
            for h_step in range(self.cfg.H_cycles):
                for l_step in range(self.cfg.L_cycles):
                    if not (h_step == self.cfg.H_cycles - 1 and l_step == self.cfg.L_cycles - 1):
                        z_L = L(z_L, z_H, cos_sin, x)
                if h_step != self.cfg.H_cycles - 1:
                    z_H = H(z_H, z_L, cos_sin)
        z_L = L(z_L, z_H, cos_sin, x)
        z_H = H(z_H, z_L, cos_sin)
        new_carry = InnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len :]
        q = self.q_head(z_H[:, 0]).to(torch.float32)
        return new_carry, logits, q[..., 0], q[..., 1]


# --------------------------------------------------------------------------- ACT wrapper


@dataclass
class Carry:
    inner: InnerCarry
    steps: torch.Tensor  # int32 [B]
    halted: torch.Tensor  # bool [B]
    data: dict[str, torch.Tensor]  # the examples currently being worked on

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {
            "z_H": self.inner.z_H,
            "z_L": self.inner.z_L,
            "steps": self.steps,
            "halted": self.halted,
        }
        out.update({f"data.{k}": v for k, v in self.data.items()})
        return out


class HRM(nn.Module):
    """``hrm_act_v1``: the inner model driven by adaptive computation time (ACT)."""

    def __init__(
        self,
        cfg: ModelConfig,
        seq_len: int,
        num_puzzle_ids: int,
        batch_size: int,
        backend: str = "reference",
        forward_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.cfg = cfg
        self.inner = HRMInner(cfg, seq_len, num_puzzle_ids, batch_size, forward_dtype, Ops(backend))

    @property
    def backend(self) -> str:
        return self.inner.H_level.ops.backend

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Carry:
        b = batch["inputs"].shape[0]
        device = batch["inputs"].device
        return Carry(
            inner=self.inner.empty_carry(b, device),
            steps=torch.zeros(b, dtype=torch.int32, device=device),
            halted=torch.ones(b, dtype=torch.bool, device=device),  # all start by fetching data
            data={k: torch.zeros_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor]):
        """One ACT step: halted examples are replaced by fresh ones from ``batch``."""
        halted = carry.halted
        inner_carry = self.inner.reset_carry(halted, carry.inner)
        steps = torch.where(halted, 0, carry.steps)
        data = {
            k: torch.where(halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
            for k, v in carry.data.items()
        }
        inner_carry, logits, q_halt, q_continue = self.inner(
            inner_carry, data["inputs"], data["puzzle_identifiers"]
        )
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}
        with torch.no_grad():
            steps = steps + 1
            is_last = steps >= self.cfg.halt_max_steps
            new_halted = is_last
            if self.training and self.cfg.halt_max_steps > 1:
                new_halted = new_halted | (q_halt > q_continue)
                # Exploration: a random minimum number of steps for some examples.
                explore = torch.rand_like(q_halt) < self.cfg.halt_exploration_prob
                min_steps = explore * torch.randint_like(
                    steps, low=2, high=self.cfg.halt_max_steps + 1
                )
                new_halted = new_halted & (steps >= min_steps)
                # Bootstrapped Q target from the next step (no replay buffer, as HRM/PQN).
                _, _, next_halt, next_cont = self.inner(
                    inner_carry, data["inputs"], data["puzzle_identifiers"]
                )
                outputs["target_q_continue"] = torch.sigmoid(
                    torch.where(is_last, next_halt, torch.maximum(next_halt, next_cont))
                )
        return Carry(inner_carry, steps.to(torch.int32), new_halted, data), outputs


def count_parameters(model: HRM) -> dict[str, int]:
    """Trainable network parameters, and the puzzle-embedding table on top of them."""
    network = sum(p.numel() for p in model.parameters())
    table = model.inner.puzzle_emb.weights.numel() if model.cfg.puzzle_emb_ndim > 0 else 0
    return {"network": network, "puzzle_embedding": table, "total": network + table}
