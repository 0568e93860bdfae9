"""Ahead-of-time compile specs shared by every kernel family.

Each kernel module exposes ``aot_specs(shape: LaunchShape, target: str) -> list[AotSpec]``
describing the launch configurations the trainer really uses at a model's training shapes on a
target family (see ``TARGET_FAMILIES``). The compile report (``hrm_fast.compile_report``,
``hrm-fast kernels-report``) derives one ``LaunchShape`` per preset, compiles each spec with
``triton.compile`` for every GPU target and reads registers, spills, shared memory / LDS and
MMA / MFMA / WMMA usage from the cubin or the AMDGCN assembly.
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


@dataclass(frozen=True)
class LaunchShape:
    """A model's training shapes as the kernels' launches see them (bf16 activations)."""

    batch: int
    seq_len: int  # positions per example in the blocks: canvas**2 + puzzle-embedding positions
    hidden: int
    heads: int
    intermediate: int  # SwiGLU inner width
    vocab: int
    canvas: int  # grid side: the loss and the augmentation see canvas**2 positions
    # More head counts to compile attention for at this shape: head dims no preset uses.
    extra_heads: tuple[int, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def grid_len(self) -> int:
        return self.canvas * self.canvas


# GPU target families: launch configurations differ per family only where the static report
# (hrm-fast kernels-report) shows they must. "nvidia" is sm_80/86/89/90; "cdna" is AMD Instinct
# gfx90a (MI200) and gfx942 (MI300), wave 64; "rdna3" is AMD Radeon gfx1100 (RX 7900), wave 32.
TARGET_FAMILIES = ("nvidia", "cdna", "rdna3")


def target_family(arch: int | str) -> str:
    """The family of a compile target: an int compute capability (80) or an AMD gfx name."""
    if isinstance(arch, int):
        return "nvidia"
    name = str(arch).split(":")[0].lower()  # ROCm's gcnArchName carries ":sramecc+:xnack-"
    # Compiled and checked: gfx90a, gfx942 (cdna) and gfx1100 (rdna3). Other gfx9 / gfx10-12
    # parts run with their nearest family's table (wave 64 vs wave 32), unchecked.
    if name.startswith("gfx9"):
        return "cdna"
    if name.startswith("gfx1"):
        return "rdna3"
    raise ValueError(f"no launch configurations for GPU target {arch!r}")
