"""The Tiny Recursive Model, TRM (Jolicoeur-Martineau 2025, "Less is More: Recursive Reasoning
with Tiny Networks"; SamsungSAILMontreal/TinyRecursiveModels, ``trm.py``).

Read top to bottom: the inner model (one network, the recursion, full gradient through the last
cycle), then the ACT wrapper with TRM's halt. The layers are HRM's (``hrm_fast.layers``).

One network of ``L_layers`` post-norm blocks updates both states. In TRM's code (and here) the
answer y is ``z_H`` and the latent z is ``z_L``; one recursion cycle is

    n = L_cycles times:  z_L <- net(z_L + z_H + x)
    then once:           z_H <- net(z_H + z_L)

``H_cycles`` = T cycles per ACT step: the first T-1 run without a graph, the last with gradients
through all of its n+1 applications of the same weights (not HRM's 1-step gradient). The halt
is ``q_halt > 0`` alone (TRM's ``no_ACT_continue``): no target-Q forward, no continue loss.
Parameter and buffer names follow the official code, so its state dicts load as they are.
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
    embed_inputs,
    exploration_min_steps,
    initial_carry,
    replace_halted,
    trunc_normal_init_,
)

# --------------------------------------------------------------------------- inner model


class TRMInner(nn.Module):
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
        if cfg.pos_encodings not in ("rope", "none"):
            raise ValueError(f"pos_encodings must be 'rope' or 'none', got {cfg.pos_encodings!r}")
        self.cfg, self.seq_len, self.forward_dtype = cfg, seq_len, forward_dtype
        self.puzzle_emb_len = cfg.puzzle_emb_len
        total_len = seq_len + self.puzzle_emb_len
        self.embed_scale = math.sqrt(cfg.hidden_size)
        self.embed_tokens = CastedEmbedding(
            cfg.vocab_size, cfg.hidden_size, 1 / self.embed_scale, forward_dtype
        )
        self.lm_head = CastedLinear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.q_head = CastedLinear(cfg.hidden_size, 2, bias=True)
        if cfg.puzzle_emb_ndim > 0:
            self.puzzle_emb = CastedSparseEmbedding(
                num_puzzle_ids, cfg.puzzle_emb_ndim, batch_size, forward_dtype
            )
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, total_len, cfg.rope_theta)
        self.use_rope = cfg.pos_encodings == "rope"
        if not self.use_rope:  # the fused kernel always rotates: give it the identity
            self.rotary_emb.cos_cached.fill_(1.0)
            self.rotary_emb.sin_cached.zero_()
        self.backend = ops.backend
        # The one network. TRM names it L_level; H_layers is ignored.
        self.L_level = ReasoningModule(
            cfg, cfg.L_layers, ops, token_mlp_len=total_len if cfg.mlp_t else 0
        )
        # Fixed (not learnt) initial states, restored per example when it halts.
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(cfg.hidden_size), std=1))
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(cfg.hidden_size), std=1))
        with torch.no_grad():  # Q starts near "never halt"
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)

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

    def recursion_cycle(self, z_H, z_L, x, cos_sin):
        """n latent updates from the answer and the input, then one answer update."""
        net = self.L_level
        for _ in range(self.cfg.L_cycles):
            z_L = net(z_L, z_H, cos_sin, x)
        z_H = net(z_H, z_L, cos_sin)
        return z_H, z_L

    def forward(self, carry: InnerCarry, inputs: torch.Tensor, puzzle_ids: torch.Tensor):
        cos_sin = (self.rotary_emb.cos_cached, self.rotary_emb.sin_cached)
        if not self.use_rope and self.backend == "reference":
            cos_sin = (None, None)  # skip the rotation rather than multiply by the identity
        x = embed_inputs(self, inputs, puzzle_ids)
        z_H, z_L = carry.z_H, carry.z_L
        with torch.no_grad():  # T-1 cycles improve the states without a graph
            for _ in range(self.cfg.H_cycles - 1):
                z_H, z_L = self.recursion_cycle(z_H, z_L, x, cos_sin)
        z_H, z_L = self.recursion_cycle(z_H, z_L, x, cos_sin)  # backprop through all n+1
        new_carry = InnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len :]
        q = self.q_head(z_H[:, 0]).to(torch.float32)  # on the first puzzle-embedding position
        return new_carry, logits, q[..., 0], q[..., 1]


# --------------------------------------------------------------------------- ACT wrapper


class TRM(nn.Module):
    """TRM's ACT wrapper: deep supervision over ``halt_max_steps`` steps, halting on q_halt."""

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
        self.inner = TRMInner(
            cfg, seq_len, num_puzzle_ids, batch_size, forward_dtype, Ops(backend, attention)
        )

    @property
    def backend(self) -> str:
        return self.inner.L_level.ops.backend

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Carry:
        return initial_carry(self.inner, batch)

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor]):
        """One ACT step: halted examples are replaced by fresh ones from ``batch``.

        Evaluation (eval mode) halts only at ``halt_max_steps``.
        """
        inner_carry, steps, data = replace_halted(self.inner, carry, batch)
        inner_carry, logits, q_halt, q_continue = self.inner(
            inner_carry, data["inputs"], data["puzzle_identifiers"]
        )
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}
        with torch.no_grad():
            steps = steps + 1
            new_halted = steps >= self.cfg.halt_max_steps
            if self.training and self.cfg.halt_max_steps > 1:
                new_halted = new_halted | (q_halt > 0)
                new_halted = new_halted & (steps >= exploration_min_steps(q_halt, steps, self.cfg))
        return Carry(inner_carry, steps.to(torch.int32), new_halted, data), outputs

    def forward_loss(self, carry: Carry, batch: dict[str, torch.Tensor], loss_fn, loss_cfg):
        """The training step's forward and loss: CE + BCE(q_halt, exact), no continue loss.

        q_continue is passed as 0 so the halt penalty reads TRM's rule (halt when q_halt > 0).
        """
        new_carry, out = self(carry, batch)
        q_halt = out["q_halt_logits"]
        loss, metrics = loss_fn(
            out["logits"],
            new_carry.data["labels"],
            q_halt,
            torch.zeros_like(q_halt),
            None,
            new_carry.steps,
            loss_cfg,
            self.cfg.halt_max_steps,
        )
        return new_carry, loss, metrics
