"""The start-up self-check: the fused path against the reference on the user's own device.

``run_checks`` compares, at a preset's shapes on a tiny batch and in fp32, every kernel family's
forward and backward with its ``*_ref`` (the bounds of the CPU tests, ``hrm_fast.tolerances``),
one whole fused training step (losses, gradients, one optimiser update) with the reference
step and, with ``--cuda-graphs``, a replayed step with an eager one. A kernel that fails to
compile or launch fails its family. ``checked`` caches a pass per (device, driver, torch,
triton, hrm-fast and kernel sources, preset shapes); ``choose_backend`` turns the result into
the backend a run uses. On a CPU the kernels run under Triton's interpreter.

One file per job: ``families`` (kernel families), ``step`` (the whole step, CUDA graphs),
``checks`` (``run_checks``, the report), ``cache`` (``checked``, the key), ``backend``
(``choose_backend``), ``runtime`` (``resolve_checked_runtime``: what a run uses, the ranks
agreeing).
"""

from hrm_fast.selfcheck.backend import SelfCheckFailed, choose_backend
from hrm_fast.selfcheck.cache import cache_dir, cache_key, checked, device_identity, preset_shapes
from hrm_fast.selfcheck.checks import FamilyResult, run_checks
from hrm_fast.selfcheck.families import CHECK_BATCH, family_shape
from hrm_fast.selfcheck.runtime import CheckedRuntime, checked_backend, resolve_checked_runtime

__all__ = [
    "CHECK_BATCH",
    "CheckedRuntime",
    "FamilyResult",
    "SelfCheckFailed",
    "cache_dir",
    "cache_key",
    "checked",
    "checked_backend",
    "choose_backend",
    "device_identity",
    "family_shape",
    "preset_shapes",
    "resolve_checked_runtime",
    "run_checks",
]
