"""``choose_backend``: the backend a run uses, from the (cached) self-check."""

from __future__ import annotations

import torch

from hrm_fast.config import RunConfig
from hrm_fast.errors import UserError
from hrm_fast.selfcheck import cache


class SelfCheckFailed(UserError):
    """``--backend fused`` was asked for and the fused path failed its check."""


def choose_backend(
    cfg: RunConfig, device, requested: str, force: bool = False
) -> tuple[str, str | None, str | None]:
    """-> (backend, attention_fallback, note) for a run asked for ``requested`` on ``device``.

    Only the fused path on a GPU is checked (``force``: anywhere, the kernels interpreted on a
    CPU). Passed: ("fused", None, summary), "(cached)" added when an earlier run's pass was
    reused. Attention alone failed: ("fused", "sdpa", note).
    Anything else failed: ("reference", None, note). ``requested == "fused"`` (given
    explicitly) and a failure: SelfCheckFailed, exit 2. ``note`` is the one line to print and
    record; None where nothing was checked.
    """
    device = torch.device(device)
    backend = requested
    if requested == "auto":
        backend = "fused" if (device.type == "cuda" or force) else "reference"
    if backend != "fused" or not (device.type == "cuda" or force):
        return backend, None, None
    report = cache.checked(cfg, device)
    if report["passed"]:
        return "fused", None, report["summary"] + (" (cached)" if report.get("cached") else "")
    if requested == "fused":
        raise SelfCheckFailed(
            f"--backend fused: {report['summary']}; drop --backend fused to fall back, and "
            "please send us the file `hrm-fast check --json FILE` writes"
        )
    if report["failed"] == ["attention"]:
        return "fused", "sdpa", f"{report['summary']}; attention runs through SDPA"
    return "reference", None, f"{report['summary']}; training on the reference backend"
