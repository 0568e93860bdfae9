"""A minimal, independent port of the official TRM (SamsungSAILMontreal/TinyRecursiveModels,
``models/recursive_reasoning/trm.py`` at e7b6871) for parity tests.

Follows trm.py line by line with a plain dataclass for the pydantic config. Its layers
(``models/layers.py``, ``models/sparse_embedding.py``) are the same code as HRM's, so they come
from the HRM port (``official_hrm.py``). Imports nothing from hrm_fast, so a shared mistake
cannot hide in both sides of a parity test. Only the ``no_ACT_continue=True`` path is ported:
the official ``False`` branch unpacks five values from a call that returns three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tests.support.official_hrm import (
    ACTLossHead,
    Attention,
    Carry,
    CastedEmbedding,
    CastedLinear,
    CastedSparseEmbedding,
    InnerCarry,
    RotaryEmbedding,
    SwiGLU,
    rms_norm,
    trunc_normal_init_,
)


@dataclass
class OfficialTRMConfig:
    batch_size: int
    seq_len: int
    num_puzzle_identifiers: int
    vocab_size: int
    H_cycles: int
    L_cycles: int
    H_layers: int  # ignored
    L_layers: int
    hidden_size: int
    expansion: float
    num_heads: int
    pos_encodings: str
    halt_max_steps: int
    halt_exploration_prob: float
    puzzle_emb_ndim: int = 0
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    forward_dtype: str = "bfloat16"
    mlp_t: bool = False
    puzzle_emb_len: int = 16
    no_ACT_continue: bool = True


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        if config.mlp_t:
            self.puzzle_emb_len = (
                -(config.puzzle_emb_ndim // -config.hidden_size)
                if config.puzzle_emb_len == 0
                else config.puzzle_emb_len
            )
            self.mlp_t = SwiGLU(
                hidden_size=config.seq_len + self.puzzle_emb_len, expansion=config.expansion
            )
        else:
            self.self_attn = Attention(
                hidden_size=config.hidden_size,
                head_dim=config.hidden_size // config.num_heads,
                num_heads=config.num_heads,
                num_key_value_heads=config.num_heads,
                causal=False,
            )
        self.mlp = SwiGLU(hidden_size=config.hidden_size, expansion=config.expansion)
        self.norm_eps = config.rms_norm_eps

    def forward(self, cos_sin, hidden_states):
        if self.config.mlp_t:
            hidden_states = hidden_states.transpose(1, 2)
            out = self.mlp_t(hidden_states)
            hidden_states = rms_norm(hidden_states + out, variance_epsilon=self.norm_eps)
            hidden_states = hidden_states.transpose(1, 2)
        else:
            hidden_states = rms_norm(
                hidden_states + self.self_attn(cos_sin=cos_sin, hidden_states=hidden_states),
                variance_epsilon=self.norm_eps,
            )
        out = self.mlp(hidden_states)
        hidden_states = rms_norm(hidden_states + out, variance_epsilon=self.norm_eps)
        return hidden_states


class ReasoningModule(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden_states, input_injection, **kwargs):
        hidden_states = hidden_states + input_injection
        for layer in self.layers:
            hidden_states = layer(hidden_states=hidden_states, **kwargs)
        return hidden_states


class Inner(nn.Module):
    def __init__(self, config: OfficialTRMConfig):
        super().__init__()
        self.config = config
        self.forward_dtype = getattr(torch, config.forward_dtype)
        self.embed_scale = math.sqrt(config.hidden_size)
        embed_init_std = 1.0 / self.embed_scale
        self.embed_tokens = CastedEmbedding(
            config.vocab_size, config.hidden_size, init_std=embed_init_std,
            cast_to=self.forward_dtype,
        )  # fmt: skip
        self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)
        self.q_head = CastedLinear(config.hidden_size, 2, bias=True)
        self.puzzle_emb_len = (
            -(config.puzzle_emb_ndim // -config.hidden_size)
            if config.puzzle_emb_len == 0
            else config.puzzle_emb_len
        )
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = CastedSparseEmbedding(
                config.num_puzzle_identifiers, config.puzzle_emb_ndim,
                batch_size=config.batch_size, init_std=0, cast_to=self.forward_dtype,
            )  # fmt: skip
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(
                dim=config.hidden_size // config.num_heads,
                max_position_embeddings=config.seq_len + self.puzzle_emb_len,
                base=config.rope_theta,
            )
        else:
            assert config.pos_encodings == "none"  # "learned" is not ported
        self.L_level = ReasoningModule([Block(config) for _ in range(config.L_layers)])
        self.register_buffer(
            "H_init",
            trunc_normal_init_(torch.empty(config.hidden_size, dtype=self.forward_dtype), std=1),
            persistent=True,
        )
        self.register_buffer(
            "L_init",
            trunc_normal_init_(torch.empty(config.hidden_size, dtype=self.forward_dtype), std=1),
            persistent=True,
        )
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)

    def _input_embeddings(self, input, puzzle_identifiers):
        embedding = self.embed_tokens(input.to(torch.int32))
        if self.config.puzzle_emb_ndim > 0:
            puzzle_embedding = self.puzzle_emb(puzzle_identifiers)
            pad_count = self.puzzle_emb_len * self.config.hidden_size - puzzle_embedding.shape[-1]
            if pad_count > 0:
                puzzle_embedding = F.pad(puzzle_embedding, (0, pad_count))
            embedding = torch.cat(
                (puzzle_embedding.view(-1, self.puzzle_emb_len, self.config.hidden_size),
                 embedding),
                dim=-2,
            )  # fmt: skip
        return self.embed_scale * embedding

    def empty_carry(self, batch_size):
        shape = (batch_size, self.config.seq_len + self.puzzle_emb_len, self.config.hidden_size)
        return InnerCarry(
            z_H=torch.empty(shape, dtype=self.forward_dtype),
            z_L=torch.empty(shape, dtype=self.forward_dtype),
        )

    def reset_carry(self, reset_flag, carry):
        return InnerCarry(
            z_H=torch.where(reset_flag.view(-1, 1, 1), self.H_init, carry.z_H),
            z_L=torch.where(reset_flag.view(-1, 1, 1), self.L_init, carry.z_L),
        )

    def forward(self, carry, batch):
        seq_info = dict(cos_sin=self.rotary_emb() if hasattr(self, "rotary_emb") else None)
        input_embeddings = self._input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_H, z_L = carry.z_H, carry.z_L
        with torch.no_grad():
            for _H_step in range(self.config.H_cycles - 1):
                for _L_step in range(self.config.L_cycles):
                    z_L = self.L_level(z_L, z_H + input_embeddings, **seq_info)
                z_H = self.L_level(z_H, z_L, **seq_info)
        for _L_step in range(self.config.L_cycles):
            z_L = self.L_level(z_L, z_H + input_embeddings, **seq_info)
        z_H = self.L_level(z_H, z_L, **seq_info)
        new_carry = InnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
        output = self.lm_head(z_H)[:, self.puzzle_emb_len :]
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
        return new_carry, output, (q_logits[..., 0], q_logits[..., 1])


class OfficialTRM(nn.Module):
    """TinyRecursiveReasoningModel_ACTV1: the ACT wrapper (no_ACT_continue=True)."""

    def __init__(self, config: OfficialTRMConfig):
        super().__init__()
        assert config.no_ACT_continue
        self.config = config
        self.inner = Inner(config)

    def initial_carry(self, batch):
        batch_size = batch["inputs"].shape[0]
        return Carry(
            inner_carry=self.inner.empty_carry(batch_size),
            steps=torch.zeros((batch_size,), dtype=torch.int32),
            halted=torch.ones((batch_size,), dtype=torch.bool),
            current_data={k: torch.empty_like(v) for k, v in batch.items()},
        )

    def forward(self, carry, batch):
        new_inner_carry = self.inner.reset_carry(carry.halted, carry.inner_carry)
        new_steps = torch.where(carry.halted, 0, carry.steps)
        new_current_data = {
            k: torch.where(carry.halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
            for k, v in carry.current_data.items()
        }
        new_inner_carry, logits, (q_halt_logits, q_continue_logits) = self.inner(
            new_inner_carry, new_current_data
        )
        outputs = {
            "logits": logits,
            "q_halt_logits": q_halt_logits,
            "q_continue_logits": q_continue_logits,
        }
        with torch.no_grad():
            new_steps = new_steps + 1
            is_last_step = new_steps >= self.config.halt_max_steps
            halted = is_last_step
            if self.training and (self.config.halt_max_steps > 1):
                halted = halted | (q_halt_logits > 0)
                min_halt_steps = (
                    torch.rand_like(q_halt_logits) < self.config.halt_exploration_prob
                ) * torch.randint_like(new_steps, low=2, high=self.config.halt_max_steps + 1)
                halted = halted & (new_steps >= min_halt_steps)
        return Carry(new_inner_carry, new_steps, halted, new_current_data), outputs


def official_trm_state_dict(model: OfficialTRM) -> dict[str, torch.Tensor]:
    """As pretrain.py saves it: ``torch.compile(ACTLossHead(model)).state_dict()``."""
    return {"_orig_mod." + k: v for k, v in ACTLossHead(model).state_dict().items()}


def official_trm_parameter_count(
    hidden_size: int, num_heads: int, L_layers: int, expansion: float, vocab_size: int,
    seq_len: int = 900, puzzle_emb_len: int = 16, mlp_t: bool = False,
) -> int:  # fmt: skip
    """The parameters the official TRM registers, counted by hand from its constructors
    (``nn.Parameter`` only: the puzzle table and H_init/L_init are buffers)."""

    def find_multiple(a, b):
        return -(a // -b) * b

    def swiglu(width):
        inter = find_multiple(round(expansion * width * 2 / 3), 256)
        return width * 2 * inter + inter * width  # gate_up_proj + down_proj

    head_dim = hidden_size // num_heads
    attention = hidden_size * (3 * num_heads * head_dim) + (num_heads * head_dim) * hidden_size
    mixer = swiglu(seq_len + puzzle_emb_len) if mlp_t else attention
    per_block = mixer + swiglu(hidden_size)
    embed_tokens = vocab_size * hidden_size
    lm_head = hidden_size * vocab_size
    q_head = hidden_size * 2 + 2
    return L_layers * per_block + embed_tokens + lm_head + q_head
