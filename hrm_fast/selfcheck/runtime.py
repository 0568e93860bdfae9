"""What a run actually runs on: ``resolve_runtime``'s device, backend and dtype, after the
(cached) self-check of the fused path on this GPU and, under torchrun, the ranks' agreement.

Every command that runs the fused kernels calls one function here before its first step:
the trainer (and a command that builds its own Trainer) ``resolve_checked_runtime``, eval and
predict ``checked_backend``. A fallback is written into the config (``train.backend``,
``train.attention``, ``train.selfcheck``) so the run's config.json and checkpoints record it.
"""

from __future__ import annotations

import dataclasses

import torch

from hrm_fast.config import RunConfig
from hrm_fast.device import resolve_runtime
from hrm_fast.errors import UserError
from hrm_fast.selfcheck.backend import SelfCheckFailed, choose_backend

ATTENTIONS = ("kernel", "sdpa")
# Outcomes, ordered so the ranks agree on the worst one: the largest code any rank reports.
PASSED, SDPA, REFERENCE, STOP = range(4)
ENDINGS = {SDPA: "; attention runs through SDPA", REFERENCE: "; training on the reference backend",
           STOP: ""}  # fmt: skip


@dataclasses.dataclass
class CheckedRuntime:
    device: torch.device
    backend: str  # "fused" or "reference"
    dtype: torch.dtype
    attention: str  # "kernel" or "sdpa" (fused backend only)
    note: str | None = None  # the check's one line; None where nothing was checked
    fallback: str | None = None  # None, "reference" or "sdpa": what the check fell back to

    def record(self, step: int) -> dict:
        """The metrics.jsonl line of the check."""
        return {"event": "selfcheck", "step": step, "passed": self.fallback is None,
                "backend": self.backend, "attention": self.attention,
                "fallback": self.fallback, "note": self.note}  # fmt: skip

    def progress_tag(self) -> str | None:
        """The few words the progress line carries while a fallback is in force."""
        if self.fallback == "reference":
            return "self-check failed: reference backend"
        if self.fallback == "sdpa":
            return "self-check failed: SDPA attention"
        return None


def _outcome(backend: str, attention: str | None) -> int:
    if backend == "reference":
        return REFERENCE
    return SDPA if attention == "sdpa" else PASSED


def checked_backend(
    cfg: RunConfig, device, requested: str, dp=None, force: bool = False
) -> tuple[str, str | None, str | None]:
    """``choose_backend`` (same result), with every rank of ``dp`` on the worst rank's outcome.

    A rank whose own check passed but another's failed says so in its note; rank 0's note
    names the first rank that failed. ``requested == "fused"`` and any rank failed: every rank
    raises SelfCheckFailed (exit 2), so none trains alone.
    """
    failure = None
    try:
        backend, attention, note = choose_backend(cfg, device, requested, force=force)
        code = _outcome(backend, attention)
    except SelfCheckFailed as e:
        failure, backend, attention, note, code = e, "fused", None, str(e), STOP
    if dp is not None and dp.world > 1:
        # Three one-flag all-reduces: the number of levels reached is the worst code.
        agreed = sum(dp.any(code >= level) for level in (SDPA, REFERENCE, STOP))
        notes = dp.gather_objects((code, note))
        if agreed != code:  # another rank failed worse: take its outcome
            failure = None
            if notes is not None:  # rank 0: name the first rank that failed so
                rank = next(r for r, (c, _) in enumerate(notes) if c == agreed)
                note = f"rank {rank}: {notes[rank][1].removeprefix('--backend fused: ')}"
            else:
                note = "another rank's self-check failed" + ENDINGS[agreed]
            if agreed == STOP:
                raise SelfCheckFailed(f"--backend fused: {note}")
            backend, attention = ("reference", None) if agreed == REFERENCE else ("fused", "sdpa")
    if failure is not None:
        raise failure
    return backend, attention, note


def resolve_checked_runtime(cfg: RunConfig, dp=None, force: bool = False) -> CheckedRuntime:
    """(device, backend, dtype, attention) a training run uses, after the self-check.

    The check runs only for the fused backend on a GPU (``force``: on a CPU too, the kernels
    interpreted; tests), from the cache when this GPU, toolchain and preset passed before.
    A fallback rewrites ``cfg.train.backend`` / ``cfg.train.attention``, and a check's note goes
    to ``cfg.train.selfcheck``. ``dp``: this rank's device, and the ranks agree.
    """
    t = cfg.train
    if t.attention not in ATTENTIONS:
        raise UserError(f"--attention: expected kernel or sdpa, got {t.attention!r}")
    device, backend, dtype = resolve_runtime(cfg)
    if dp is not None:
        device = dp.device
    if force and t.backend == "auto":  # as on a GPU: auto means the checked fused path
        backend = "fused"
    if backend != "fused":
        return CheckedRuntime(device, backend, dtype, t.attention)
    requested = "fused" if t.backend == "fused" else "auto"
    backend, fallback_attention, note = checked_backend(cfg, device, requested, dp, force)
    runtime = CheckedRuntime(device, backend, dtype, fallback_attention or t.attention, note)
    if backend == "reference":
        runtime.fallback, runtime.attention = "reference", "kernel"
    elif fallback_attention == "sdpa":
        runtime.fallback = "sdpa"
    if note is not None:  # the run's config.json and checkpoints record what ran, and why
        t.selfcheck, t.attention = note, runtime.attention
        if runtime.fallback == "reference":
            t.backend = "reference"
    return runtime
