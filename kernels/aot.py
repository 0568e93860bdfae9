"""Ahead-of-time compile specs shared by every kernel family.

Each kernel module exposes ``aot_specs(preset: str) -> list[AotSpec]`` describing the launch
configurations the trainer really uses for a preset (``seed`` or ``paper``). The kernels
report (``hrm-fast kernels-report``) compiles each spec with ``triton.compile`` for every
GPU target and reads registers, spills, shared memory and MMA usage from the cubin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AotSpec:
    name: str  # e.g. "attention_fwd"
    fn: Any  # a triton.JITFunction
    # every argument -> "*bf16", "*fp32", "*i32", "i32", "fp32" or "constexpr"
    signature: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2
    grid: tuple[int, ...] = ()  # launch grid at this shape (for occupancy context)
    note: str = ""  # the shape, e.g. "B=20 S=901 H=8 D=32 bf16"
    has_dot: bool = False  # the kernel uses tl.dot, so MMA instructions are expected
