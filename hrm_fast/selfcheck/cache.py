"""The cache of passed checks, keyed by everything their outcome depends on."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from hrm_fast.config import RunConfig
from hrm_fast.kernels._common import cache_root
from hrm_fast.selfcheck import checks
from hrm_fast.selfcheck.families import CHECK_BATCH


def cache_dir() -> Path:
    """``$HRM_FAST_CACHE_DIR/selfcheck``, else ``~/.cache/hrm-fast/selfcheck`` (XDG)."""
    return cache_root() / "selfcheck"


def device_identity(device: torch.device) -> dict:
    """What the kernels' numerics can depend on: the GPU, its driver, the toolchain."""
    import triton

    import hrm_fast

    device = torch.device(device)
    ident = {"device": device.type, "gpu": None, "capability": None, "driver": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        arch = getattr(props, "gcnArchName", None)
        ident.update(gpu=props.name, capability=arch or f"sm_{props.major}{props.minor}",
                     driver=_driver_version())  # fmt: skip
    ident.update(torch=torch.__version__, cuda=torch.version.cuda, hip=torch.version.hip,
                 triton=triton.__version__, hrm_fast=hrm_fast.__version__,
                 kernels=kernel_sources_digest())  # fmt: skip
    return ident


def _driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:  # no NVML (ROCm, no package): the toolkit version stands in
        return None if torch.version.cuda is None else f"cuda-runtime {torch.version.cuda}"


def kernel_sources_digest() -> str:
    # A source checkout changes kernels without a version bump: their text is part of the key.
    from hrm_fast import kernels

    h = hashlib.sha256()
    for path in sorted(Path(kernels.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def preset_shapes(cfg: RunConfig) -> dict:
    """Everything in the config the checks' shapes and numerics follow."""
    t = cfg.train
    return {
        "model": dataclasses.asdict(cfg.model),
        "loss": dataclasses.asdict(cfg.loss),
        "seq_len": cfg.seq_len,
        "canvas": cfg.data.canvas,
        "batch": CHECK_BATCH,
        "optimizer": [t.optimizer, t.lr, t.beta1, t.beta2, t.weight_decay, t.grad_clip],
        "cuda_graphs": t.cuda_graphs,
    }


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def checked(cfg: RunConfig, device, use_cache: bool = True) -> dict:
    """``run_checks``, or the cached pass of an identical earlier run (``"cached": true``).
    Only passes are cached: a failure is checked again next time."""
    device = torch.device(device)
    parts = {"device": device_identity(device), "shapes": preset_shapes(cfg)}
    path = cache_dir() / f"{cache_key(parts)}.json"
    if use_cache:
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == parts and stored["report"]["passed"]:
                return {**stored["report"], "cached": True}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or unreadable: check again
    report = checks.run_checks(cfg, device)
    if use_cache and report["passed"]:
        from hrm_fast.files import write_output

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_output(path, json.dumps({"key": parts, "report": report}, indent=1))
        except Exception:  # a read-only home only costs the next run the check again
            pass
    return {**report, "cached": False}
