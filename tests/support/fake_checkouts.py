"""Tiny official-shaped checkouts for ``hrm-fast bench --against`` tests, written into a test's
tmp_path: the official file layout, class names and call signatures, over the independent
ports in ``official_hrm.py`` / ``official_trm.py`` (no official code is committed here).

The files import ``tests.support``, so the repository root goes on their ``sys.path``: the
bench imports them in a worker process of its own.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PATH = f"""import sys
if {str(REPO)!r} not in sys.path:
    sys.path.insert(0, {str(REPO)!r})
"""

COMMON = _PATH + "from tests.support.official_hrm import trunc_normal_init_  # noqa: F401\n"

# HRM's layers.py imports flash-attn, which no CPU has: the bench must stand in for it.
HRM_LAYERS = """try:
    from flash_attn_interface import flash_attn_func  # noqa: F401
except ImportError:
    from flash_attn import flash_attn_func  # noqa: F401
"""

TRM_LAYERS = "import einops  # noqa: F401\n"

SPARSE_EMBEDDING = (
    _PATH
    + '''
import torch
from torch.optim import Optimizer

from tests.support.official_hrm import CastedSparseEmbedding  # noqa: F401


class CastedSparseEmbeddingSignSGD_Distributed(Optimizer):
    """Sign-SGD with decoupled weight decay on the rows the batch used (world size 1)."""

    def __init__(self, params, world_size, lr=1e-3, weight_decay=1e-2):
        assert world_size == 1
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            by_kind = {("grad" if p.requires_grad else p.ndim): p for p in group["params"]}
            grad, ids, table = by_kind["grad"].grad, by_kind[1], by_kind[2]
            rows, inverse = ids.long().unique(return_inverse=True)
            summed = torch.zeros(len(rows), grad.shape[1], dtype=grad.dtype)
            summed.index_add_(0, inverse, grad)
            decay = 1.0 - group["lr"] * group["weight_decay"]
            table[rows] = table[rows] * decay - group["lr"] * summed.sign()
'''
)

LOSSES = """import torch
import torch.nn.functional as F
from torch import nn


def stablemax_cross_entropy(logits, labels, ignore_index=-100):
    x = logits.to(torch.float64)
    s = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)  # the epsilon keeps x = 1's grad finite
    logp = torch.log(s / s.sum(-1, keepdim=True))
    valid = labels != ignore_index
    picked = logp.gather(-1, torch.where(valid, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, picked, 0)


class ACTLossHead(nn.Module):
    def __init__(self, model, loss_type):
        super().__init__()
        self.model = model
        self.loss_fn = {"stablemax_cross_entropy": stablemax_cross_entropy}[loss_type]

    def initial_carry(self, *args, **kwargs):
        return self.model.initial_carry(*args, **kwargs)

    def forward(self, return_keys, **model_kwargs):
        carry, out = self.model(**model_kwargs)
        labels = carry.current_data["labels"]
        valid = labels != -100
        counts = valid.sum(-1)
        with torch.no_grad():
            right = (valid & (out["logits"].argmax(-1) == labels)).sum(-1) == counts
        per_token = self.loss_fn(out["logits"], labels) / counts.clamp_min(1).unsqueeze(-1)
        lm_loss = per_token.sum()
        q = out["q_halt_logits"]
        loss = lm_loss + 0.5 * F.binary_cross_entropy_with_logits(q, right.to(q.dtype),
                                                                  reduction="sum")
        if "target_q_continue" in out:
            loss = loss + 0.5 * F.binary_cross_entropy_with_logits(
                out["q_continue_logits"], out["target_q_continue"], reduction="sum")
        metrics = {"count": carry.halted.sum(), "lm_loss": lm_loss.detach()}
        return carry, loss, metrics, {}, carry.halted.all()
"""

HRM_MODEL = (
    _PATH
    + """
import dataclasses

from pydantic import BaseModel  # noqa: F401  (as the official file imports it)

from models.layers import flash_attn_func  # noqa: F401
from tests.support.official_hrm import OfficialConfig, OfficialHRM


class HierarchicalReasoningModel_ACTV1(OfficialHRM):
    def __init__(self, config_dict):
        known = {f.name for f in dataclasses.fields(OfficialConfig)}
        super().__init__(OfficialConfig(**{k: v for k, v in config_dict.items() if k in known}))

    @property
    def puzzle_emb(self):
        return self.inner.puzzle_emb
"""
)

TRM_MODEL = (
    _PATH
    + """
import dataclasses

from tests.support.official_trm import OfficialTRM, OfficialTRMConfig


class TinyRecursiveReasoningModel_ACTV1(OfficialTRM):
    def __init__(self, config_dict):
        known = {f.name for f in dataclasses.fields(OfficialTRMConfig)}
        super().__init__(OfficialTRMConfig(**{k: v for k, v in config_dict.items()
                                              if k in known}))

    @property
    def puzzle_emb(self):
        return self.inner.puzzle_emb
"""
)

EMA = """class EMAHelper:
    def __init__(self, mu=0.999):
        self.mu, self.shadow = mu, {}

    def register(self, module):
        for name, p in module.named_parameters():
            self.shadow[name] = p.data.clone()

    def update(self, module):
        for name, p in module.named_parameters():
            self.shadow[name] = (1.0 - self.mu) * p.data + self.mu * self.shadow[name]
"""


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def write_fake_hrm(root: Path, model: str = HRM_MODEL) -> Path:
    """A sapientinc/HRM-shaped checkout; ``model``: the text of models/hrm/hrm_act_v1.py."""
    return _write(root, {
        "models/common.py": COMMON, "models/layers.py": HRM_LAYERS,
        "models/losses.py": LOSSES, "models/sparse_embedding.py": SPARSE_EMBEDDING,
        "models/hrm/hrm_act_v1.py": model,
    })  # fmt: skip


def write_fake_trm(root: Path) -> Path:
    """A TinyRecursiveModels-shaped checkout (with its models/ema.py)."""
    return _write(root, {
        "models/common.py": COMMON, "models/layers.py": TRM_LAYERS,
        "models/losses.py": LOSSES, "models/sparse_embedding.py": SPARSE_EMBEDDING,
        "models/ema.py": EMA, "models/recursive_reasoning/trm.py": TRM_MODEL,
    })  # fmt: skip
