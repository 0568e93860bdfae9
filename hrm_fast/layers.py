"""Building blocks shared by HRM (``hrm_fast.model``) and TRM (``hrm_fast.trm``).

Layers with HRM/TRM's numerics (fp32 master weights cast at use, weightless fp32-statistics
RMSNorm, RoPE), the post-norm block, the ``Ops`` switch between the eager reference and the
fused Triton kernels, and the ACT carry both models thread through training steps. Parameter
names follow the official code of both models, so their state dicts load as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hrm_fast.config import ModelConfig
from hrm_fast.kernels import cpu_attention, cpu_linear
from hrm_fast.kernels.rope import apply_rope

# --------------------------------------------------------------------------- layers


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


class CastedLinear(nn.Module):
    """fp32 master weights, cast to the activation dtype at use (HRM's mixed precision).
    ``onednn`` (set by ``use_onednn_linear``): fp32 CPU products go through oneDNN."""

    onednn = False

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(
            trunc_normal_init_(torch.empty(out_features, in_features), std=in_features**-0.5)
        )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fp32_cpu = x.dtype == torch.float32 and x.device.type == "cpu"
        if self.onednn and self.bias is None and fp32_cpu:
            return cpu_linear.linear(x, self.weight)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


def use_onednn_linear(model: nn.Module, device: torch.device, dtype: torch.dtype) -> str:
    """Sends the model's fp32 CPU linear layers through oneDNN where that is the faster path
    (hrm_fast.kernels.cpu_linear); returns what the run's matmuls use, in words."""
    if device.type != "cpu":
        return "n/a (not a CPU)"
    if dtype != torch.float32:
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
        return f"{name}: torch's own"
    use, why = cpu_linear.status()
    for m in model.modules():
        if isinstance(m, CastedLinear):
            m.onednn = use
    return why


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


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """HRM's weightless RMSNorm: fp32 statistics, output in the input dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


ATTENTION_CHOICES = ("kernel", "sdpa")


class Ops:
    """The memory-bound ops of a block; ``fused`` swaps in the Triton kernels.

    ``attention="sdpa"`` keeps the other fused kernels but runs attention through PyTorch's SDPA:
    the fallback when the start-up self-check (hrm_fast.selfcheck) fails for attention alone.
    On the reference backend ``"kernel"`` runs CPU attention through hrm-fast's C++ kernel where
    it builds and supports the dtype and head dim (hrm_fast.kernels.cpu_attention; same
    numerics as SDPA, several times faster), and SDPA elsewhere; ``"sdpa"`` always runs SDPA.
    """

    def __init__(self, backend: str, attention: str = "kernel"):
        if backend not in ("reference", "fused"):
            raise ValueError(f"backend must be 'reference' or 'fused', got {backend!r}")
        if attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention must be 'kernel' or 'sdpa', got {attention!r}")
        self.backend = backend
        self.attention_impl = attention if backend == "fused" else "reference"
        if backend == "fused":
            from hrm_fast.kernels.attention import rope_attention, rope_attention_sdpa
            from hrm_fast.kernels.rms_norm import add3, add_rms_norm
            from hrm_fast.kernels.swiglu import swiglu

            self.attention = rope_attention if attention == "kernel" else rope_attention_sdpa
            self.add_rms_norm, self.swiglu, self.add3 = add_rms_norm, swiglu, add3
        else:
            self.attention, self.add_rms_norm = _attention_reference, _add_rms_norm_reference
            self.swiglu, self.add3 = _swiglu_reference, _add3_reference
            if attention == "kernel":
                # Built (or found in its cache) here, outside any compiled region; the forward
                # only tests membership in this constant set.
                self.cpu_kernel = cpu_attention.supported()
                self.attention = self._attention_cpu_kernel
        self.cpu_attention = self._cpu_attention_status(attention)

    cpu_kernel: frozenset = frozenset()

    def _cpu_attention_status(self, attention: str) -> str:
        if self.backend == "fused":
            return "sdpa" if attention == "sdpa" else "n/a (fused backend)"
        if attention == "sdpa":
            return "sdpa (--attention sdpa)"
        return cpu_attention.status()

    def _attention_cpu_kernel(self, qkv, cos, sin):
        if qkv.device.type != "cpu" or (qkv.dtype, qkv.shape[3]) not in self.cpu_kernel:
            return _attention_reference(qkv, cos, sin)
        return cpu_attention.attention(*_rotated_qkv(qkv, cos, sin))


def _rotated_qkv(qkv, cos, sin):
    """q, k (RoPE applied) and v as [B, S, H, D] views of the [B, S, 3H, D] projection."""
    h = qkv.shape[2] // 3
    qk, v = qkv[:, :, : 2 * h], qkv[:, :, 2 * h :]
    if cos is not None:  # None: no position encoding (TRM's pos_encodings="none")
        qk = apply_rope(qk, cos, sin)  # q and k in one pass
    return qk[:, :, :h], qk[:, :, h:], v


def _attention_reference(qkv, cos, sin):
    return cpu_attention.attention_ref(*_rotated_qkv(qkv, cos, sin))


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


def swiglu_width(features: int, expansion: float) -> int:
    """HRM/TRM's SwiGLU inner width: 2/3 of expansion * features, rounded up to 256."""
    n = round(expansion * features * 2 / 3)
    return -(n // -256) * 256


class SwiGLU(nn.Module):
    def __init__(self, features: int, intermediate: int, ops: Ops):
        super().__init__()
        self.ops = ops
        self.gate_up_proj = CastedLinear(features, 2 * intermediate, bias=False)
        self.down_proj = CastedLinear(intermediate, features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.ops.swiglu(self.gate_up_proj(x)))


class Block(nn.Module):
    """Post-norm transformer block: norm after each residual add, no learnt norm weights.

    ``token_mlp_len`` > 0 is TRM's ``mlp_t`` variant: the attention sub-layer becomes a SwiGLU
    across the sequence axis (of that length). As in TRM's code, that sub-layer's RMSNorm is
    taken over the sequence axis too (it runs on the transposed tensor).
    """

    def __init__(self, cfg: ModelConfig, ops: Ops, token_mlp_len: int = 0):
        super().__init__()
        self.ops, self.eps = ops, cfg.rms_norm_eps
        self.token_mlp = token_mlp_len > 0
        if self.token_mlp:
            width = swiglu_width(token_mlp_len, cfg.expansion)
            self.mlp_t = SwiGLU(token_mlp_len, width, ops)
        else:
            self.self_attn = Attention(cfg, ops)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, ops)

    def forward(self, cos_sin, h: torch.Tensor) -> torch.Tensor:
        if self.token_mlp:
            h_t = h.transpose(1, 2)  # [B, hidden, S]: mix along the sequence
            h = self.ops.add_rms_norm(h_t, self.mlp_t(h_t), self.eps).transpose(1, 2)
        else:
            h = self.ops.add_rms_norm(h, self.self_attn(cos_sin, h), self.eps)
        return self.ops.add_rms_norm(h, self.mlp(h), self.eps)


class ReasoningModule(nn.Module):
    """A stack of blocks; its input is the state plus the injected tensors, added first."""

    def __init__(self, cfg: ModelConfig, num_layers: int, ops: Ops, token_mlp_len: int = 0):
        super().__init__()
        self.ops = ops
        self.layers = nn.ModuleList(Block(cfg, ops, token_mlp_len) for _ in range(num_layers))

    def forward(self, h, injection, cos_sin, extra=None):
        h = self.ops.add3(h, injection, extra)  # input injection by addition
        for layer in self.layers:
            h = layer(cos_sin, h)
        return h


def embed_inputs(inner, inputs: torch.Tensor, puzzle_ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings behind the puzzle embedding's ``puzzle_emb_len`` positions (its vector
    zero-padded to fill them), scaled by sqrt(hidden): HRM's and TRM's input encoding."""
    cfg = inner.cfg
    emb = inner.embed_tokens(inputs)
    if cfg.puzzle_emb_ndim > 0:
        pe = inner.puzzle_emb(puzzle_ids)
        pad = cfg.puzzle_emb_len * cfg.hidden_size - pe.shape[-1]
        if pad > 0:
            pe = F.pad(pe, (0, pad))
        emb = torch.cat((pe.view(-1, cfg.puzzle_emb_len, cfg.hidden_size), emb), dim=-2)
    return inner.embed_scale * emb


# --------------------------------------------------------------------------- ACT carry


@dataclass
class InnerCarry:
    z_H: torch.Tensor
    z_L: torch.Tensor


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


def initial_carry(inner, batch: dict[str, torch.Tensor]) -> Carry:
    """Every example starts halted, so the first step fetches data and resets its state."""
    b = batch["inputs"].shape[0]
    device = batch["inputs"].device
    return Carry(
        inner=inner.empty_carry(b, device),
        steps=torch.zeros(b, dtype=torch.int32, device=device),
        halted=torch.ones(b, dtype=torch.bool, device=device),
        data={k: torch.zeros_like(v) for k, v in batch.items()},
    )


def replace_halted(inner, carry: Carry, batch: dict[str, torch.Tensor]):
    """Halted examples restart from the initial state on fresh data from ``batch``.

    Returns (inner carry, steps, data) for the step about to run.
    """
    halted = carry.halted
    inner_carry = inner.reset_carry(halted, carry.inner)
    steps = torch.where(halted, 0, carry.steps)
    data = {
        k: torch.where(halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
        for k, v in carry.data.items()
    }
    return inner_carry, steps, data


def exploration_min_steps(q_halt: torch.Tensor, steps: torch.Tensor, cfg: ModelConfig):
    """A random minimum number of ACT steps for a random ``halt_exploration_prob`` share."""
    explore = torch.rand_like(q_halt) < cfg.halt_exploration_prob
    return explore * torch.randint_like(steps, low=2, high=cfg.halt_max_steps + 1)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable network parameters, and the puzzle-embedding table on top of them."""
    network = sum(p.numel() for p in model.parameters())
    table = model.inner.puzzle_emb.weights.numel() if model.cfg.puzzle_emb_ndim > 0 else 0
    return {"network": network, "puzzle_embedding": table, "total": network + table}
