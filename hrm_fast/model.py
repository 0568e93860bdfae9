"""The Hierarchical Reasoning Model, ``hrm_act_v1`` (Wang et al. 2025; sapientinc/HRM).

Read top to bottom: the inner model (H/L reasoning modules of post-norm blocks from
``hrm_fast.layers``) with its 1-step gradient, then the ACT wrapper with its Q-learning halt.
Parameter and buffer names follow the official code, so official state dicts load as they are
(see ``hrm_fast.convert``).

Two backends share the parameters: ``reference`` is HRM's eager torch code; ``fused`` routes the
memory-bound work (RoPE + attention, residual + RMSNorm, SwiGLU, the injection add) through the
Triton kernels in ``hrm_fast.kernels``. On CPU tensors the fused ops fall back to their eager
references, so both backends run anywhere.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hrm_fast.config import ModelConfig
from hrm_fast.layers import (
    Carry,
    CastedEmbedding,
    CastedLinear,
    CastedSparseEmbedding,
    InnerCarry,
    Ops,
    ReasoningModule,
    RotaryEmbedding,
    count_parameters,
    embed_inputs,
    exploration_min_steps,
    initial_carry,
    replace_halted,
    trunc_normal_init_,
)

__all__ = ["HRM", "HRMInner", "Carry", "InnerCarry", "count_parameters"]

# --------------------------------------------------------------------------- inner model


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
        return embed_inputs(self, inputs, puzzle_ids)

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
        attention: str = "kernel",
    ):
        super().__init__()
        self.cfg = cfg
        self.inner = HRMInner(
            cfg, seq_len, num_puzzle_ids, batch_size, forward_dtype, Ops(backend, attention)
        )

    @property
    def backend(self) -> str:
        return self.inner.H_level.ops.backend

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Carry:
        return initial_carry(self.inner, batch)

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor]):
        """One ACT step: halted examples are replaced by fresh ones from ``batch``."""
        inner_carry, steps, data = replace_halted(self.inner, carry, batch)
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
                new_halted = new_halted & (steps >= exploration_min_steps(q_halt, steps, self.cfg))
                # Bootstrapped Q target from the next step (no replay buffer, as HRM/PQN).
                _, _, next_halt, next_cont = self.inner(
                    inner_carry, data["inputs"], data["puzzle_identifiers"]
                )
                outputs["target_q_continue"] = torch.sigmoid(
                    torch.where(is_last, next_halt, torch.maximum(next_halt, next_cont))
                )
        return Carry(inner_carry, steps.to(torch.int32), new_halted, data), outputs

    def forward_loss(self, carry: Carry, batch: dict[str, torch.Tensor], loss_fn, loss_cfg):
        """The training step's forward and loss: HRM's halt compares q_halt with q_continue,
        and q_continue learns the bootstrapped target."""
        new_carry, out = self(carry, batch)
        loss, metrics = loss_fn(
            out["logits"],
            new_carry.data["labels"],
            out["q_halt_logits"],
            out["q_continue_logits"],
            out["target_q_continue"] if "target_q_continue" in out else None,
            new_carry.steps,
            loss_cfg,
            self.cfg.halt_max_steps,
        )
        return new_carry, loss, metrics
