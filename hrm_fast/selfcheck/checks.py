"""``run_checks``: every check, each failure caught as its family's, into one report."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import torch

from hrm_fast.config import RunConfig
from hrm_fast.errors import UserError
from hrm_fast.selfcheck import families, step

FAMILIES = ("attention", "rms_norm", "swiglu", "arc_loss", "augment", "step", "cuda_graphs")


@dataclasses.dataclass
class FamilyResult:
    family: str
    status: str  # "passed", "failed" or "skipped"
    shape: list[int] | None = None
    err: float | None = None  # the worst compared tensor's error ...
    tol: float | None = None  # ... and its bound
    detail: str = ""  # failed: the tensor and its error, or the exception; skipped: why

    def line(self) -> str:
        if self.status == "passed":
            return f"{self.family} {self.err:.1e} (tol {self.tol:.0e})"
        if self.status == "skipped":
            return f"{self.family} skipped ({self.detail})"
        return f"{self.family} at {self.shape}: {self.detail}"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _run_family(name, fn, cfg, device, **kwargs) -> FamilyResult:
    gen = torch.Generator().manual_seed(1000 + FAMILIES.index(name))
    shape = families.family_shape(name, cfg)
    try:
        with families.interpreted(device):
            comps = fn(cfg, device, gen, **kwargs)
    except Exception as e:  # a compile or launch error is this family's failure
        return FamilyResult(name, "failed", shape, detail=_one_line(e))
    if not comps:
        return FamilyResult(name, "failed", shape, detail="nothing was compared")
    worst = max(comps, key=lambda c: c.err / c.tol if c.tol > 0 else (0 if c.err == 0 else 1e30))
    failed = [c for c in comps if not c.ok]
    if failed:
        return FamilyResult(name, "failed", shape, failed[0].err, failed[0].tol, failed[0].line())
    return FamilyResult(name, "passed", shape, worst.err, worst.tol)


@contextlib.contextmanager
def _isolated(device: torch.device):
    """The caller's random streams untouched (a checked run and a cached one draw alike), and
    fp32 matmuls in full fp32 whatever the caller set (TF32 would exceed every bound)."""
    devices = [device] if device.type == "cuda" else []
    precision = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    with torch.random.fork_rng(devices=devices):
        try:
            torch.set_float32_matmul_precision("highest")
            torch.backends.cudnn.allow_tf32 = False
            yield
        finally:
            torch.set_float32_matmul_precision(precision)
            torch.backends.cudnn.allow_tf32 = cudnn_tf32


def run_checks(cfg: RunConfig, device: torch.device | str) -> dict:
    """Every check at ``cfg``'s shapes on ``device``; a JSON-ready report (see module doc)."""
    device = torch.device(device)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError("self-check on the CPU: set TRITON_INTERPRET=1 before triton is imported "
                        "(`hrm-fast check --device cpu` does)")  # fmt: skip
    with _isolated(device):
        return _run_all(cfg, device)


def _run_all(cfg: RunConfig, device: torch.device) -> dict:
    results = []
    for name, fn in families.KERNEL_CHECKS.items():
        if name == "attention" and cfg.model.arch == "trm" and cfg.model.mlp_t:
            results.append(FamilyResult(name, "skipped", detail="--mlp-t has no attention"))
            continue
        results.append(_run_family(name, fn, cfg, device))
    attention_failed = results[0].status == "failed"
    # Attention alone failing is survivable: the rest of the step is checked with SDPA.
    attention = "sdpa" if attention_failed else "kernel"
    results.append(_run_family("step", step.check_step, cfg, device, attention=attention))
    if not cfg.train.cuda_graphs:
        results.append(FamilyResult("cuda_graphs", "skipped", detail="--cuda-graphs is off"))
    elif device.type != "cuda":
        results.append(FamilyResult("cuda_graphs", "skipped", detail="needs a CUDA device"))
    else:
        results.append(
            _run_family("cuda_graphs", step.check_cuda_graphs, cfg, device, attention=attention)
        )
    failed = [r for r in results if r.status == "failed"]
    summary = (
        "self-check passed: " + ", ".join(r.line() for r in results if r.status == "passed")
        if not failed
        else "self-check failed: " + "; ".join(r.line() for r in failed)
    )
    return {
        "passed": not failed,
        "failed": [r.family for r in failed],
        "attention": attention,
        "summary": summary,
        "families": [dataclasses.asdict(r) for r in results],
    }
