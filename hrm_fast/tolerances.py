"""The fp32 parity tolerances of the fused kernels against their references, and one comparison.

Shared by the CPU tests (tests/) and the start-up self-check (hrm_fast.selfcheck), so a GPU is
held to exactly the bounds the interpreter runs are. Each pair is (atol, rtol): an element
passes when ``|got - want| <= atol + rtol * |want|``, with ``want`` the float64 reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# kernels/attention.py, fp32 inputs of O(1): the output and d(qkv).
ATTENTION_OUT = (2e-5, 1e-5)
ATTENTION_DQKV = (5e-5, 1e-5)
# kernels/rms_norm.py: the normalised output, and the gradient shared by x and r.
RMS_NORM_Y = (2e-6, 2e-6)
RMS_NORM_DX = (1e-5, 1e-5)
ADD3 = (1e-6, 1e-6)
# kernels/swiglu.py: the output and d(gate_up).
SWIGLU = (1e-5, 1e-5)
# kernels/arc_loss.py through the public loss: the scalar loss and d(logits).
ARC_LOSS = (2e-6, 1e-6)
ARC_LOSS_DLOGITS = (1e-8, 1e-4)
# kernels/augment.py: integer outputs, bit-identical.
AUGMENT = (0.0, 0.0)

# The whole fused training step against the reference step, fp32 (tests/support/training.py): losses
# and metrics as pytest.approx(rel, abs), weights after the optimiser update as (atol, rtol).
STEP_LOSS_REL, STEP_LOSS_ABS = 1e-4, 1e-5
# The continuous loss terms; accuracies and class counts follow argmaxes, which near-ties flip.
STEP_LOSS_KEYS = (
    "loss", "lm_loss", "q_halt_loss", "q_continue_loss", "diversity", "distribution", "halt",
)  # fmt: skip
STEP_WEIGHTS = (1e-5, 1e-4)
# Gradients of one step, relative to each tensor's largest reference magnitude: one optimiser
# update barely moves the weights, so this is the bound that sees a wrong backward.
STEP_GRAD_REL = 1e-4


@dataclass
class Comparison:
    """One tensor against its reference: the worst element relative to its allowance."""

    name: str
    ok: bool
    max_err: float  # the largest absolute error
    err: float  # the error at the element closest to (or furthest past) its bound
    tol: float  # that element's bound, atol + rtol * |want|
    detail: str = ""

    def line(self) -> str:
        if self.detail:
            return f"{self.name}: {self.detail}"
        return f"{self.name}: max err {self.err:.1e} vs tol {self.tol:.1e}"


def compare(name: str, got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float):
    """``got`` against ``want`` in float64 on the CPU; NaN/inf or a shape mismatch fails."""
    got = got.detach().to(torch.float64).cpu()
    want = want.detach().to(torch.float64).cpu()
    if got.shape != want.shape:
        shapes = f"shape {list(got.shape)} != {list(want.shape)}"
        return Comparison(name, False, float("inf"), float("inf"), atol, shapes)
    bad = ~torch.isfinite(got)
    if bad.any():
        detail = f"{int(bad.sum())} non-finite elements"
        return Comparison(name, False, float("inf"), float("inf"), atol, detail)
    if got.numel() == 0:
        return Comparison(name, True, 0.0, 0.0, atol)
    err = (got - want).abs()
    allowed = atol + rtol * want.abs()
    ratio = torch.where(err == 0, 0.0, err / allowed)  # x/0 = inf: past an exact bound
    i = int(ratio.flatten().argmax())
    worst = float(ratio.flatten()[i])
    return Comparison(
        name, worst <= 1.0, float(err.max()), float(err.flatten()[i]), float(allowed.flatten()[i])
    )


def relative_to_max(want: torch.Tensor, rel: float) -> tuple[float, float]:
    """(atol, rtol) for a tensor compared relative to its largest reference magnitude."""
    scale = float(want.detach().abs().max()) if want.numel() else 0.0
    return rel * scale + 1e-12, 0.0
