"""Ahead-of-time GPU compile report for every kernel family (no GPU needed).

Each family module exposes ``aot_specs(preset, target) -> list[AotSpec]``. For every spec and
GPU target we run ``triton.compile`` (the same pipeline a launch uses) and read what the
hardware will see.

NVIDIA (sm_80/86/89/90): TTIR -> TTGIR -> PTX -> ptxas -> cubin; from the cubin: registers per
thread, local-memory (spill) bytes, static shared memory, MMA instructions in the SASS, plus
Triton's dynamic shared memory request; occupancy by the CUDA occupancy rules.

AMD (gfx90a, gfx942: CDNA, wave 64; gfx1100: RDNA3, wave 32): TTGIR -> LLVM -> AMDGCN ->
hsaco; from the AMDGCN listing's code-object metadata: VGPRs (with AGPRs), SGPRs, VGPR/SGPR
spills, scratch and LDS bytes, v_mfma_* / v_wmma_* instructions; occupancy in waves per SIMD
by the limits LLVM's AMDGPU backend uses (see AMD_LIMITS).

Entry points: ``main(argv)`` (``hrm-fast kernels-report``, ``python -m hrm_fast.kernels.report``
and the CMake build), ``collect_specs``, ``compile_spec``, ``compile_all``, ``occupancy``.

Compiles run in spawned worker processes with ``TRITON_INTERPRET=0``: under the interpreter
(the test suite sets it) ``@triton.jit`` returns interpreter objects that ``triton.compile``
cannot lower, so the workers re-import the family modules themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import json
import math
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hrm_fast.kernels.aot import TARGET_FAMILIES, target_family

from hrm_fast.config import PRESETS as CONFIG_PRESETS

FAMILIES = ("attention", "rms_norm", "swiglu", "arc_loss", "augment", "board_augment")
# Every GPU-sized preset in hrm_fast/config.py, so a new preset is compiled (and must have
# aot_specs in every family) without editing this file; smoke and debug are CPU-sized.
CPU_PRESETS = ("smoke", "debug", "trm-smoke", "collapse", "sudoku-cpu", "maze-cpu", "board-debug")
# GPU board presets whose aot_specs come with the specs derived from preset shapes (not yet in
# every family); the interpreter parity tests cover their shapes meanwhile.
BOARD_PRESETS_PENDING = ("sudoku-extreme", "maze-hard", "hrm-sudoku-extreme", "hrm-maze-hard")
PRESETS = tuple(name for name in CONFIG_PRESETS if name not in CPU_PRESETS + BOARD_PRESETS_PENDING)
DEFAULT_ARCHS = (80, 86, 89, 90)
MMA_OPCODES = ("HGMMA", "HMMA", "IMMA", "QGMMA", "IGMMA", "DMMA")  # sm_90 WGMMA -> *GMMA


# --------------------------------------------------------------------------------------------
# Occupancy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchLimits:
    max_warps: int  # resident warps per SM
    max_blocks: int  # resident blocks per SM
    smem_per_sm: int  # shared memory per SM at the largest carveout (bytes)
    smem_per_block: int  # max shared memory one block may use (opt-in limit, bytes)
    regs_per_sm: int = 65536
    regs_per_block: int = 65536
    max_regs_per_thread: int = 255
    reg_alloc_unit: int = 256  # registers are allocated per warp in units of 256
    sub_partitions: int = 4  # the register file is split over 4 SM sub-partitions
    smem_alloc_unit: int = 128
    smem_reserved_per_block: int = (
        1024  # system use, sm_80+ (cudaDevAttrReservedSharedMemoryPerBlock)
    )


# CUDA C Programming Guide, "Compute Capabilities" table (features and technical
# specifications), at the maximum shared-memory carveout.
ARCH_LIMITS: dict[int, ArchLimits] = {
    80: ArchLimits(max_warps=64, max_blocks=32, smem_per_sm=164 * 1024, smem_per_block=163 * 1024),
    86: ArchLimits(max_warps=48, max_blocks=16, smem_per_sm=100 * 1024, smem_per_block=99 * 1024),
    89: ArchLimits(max_warps=48, max_blocks=24, smem_per_sm=100 * 1024, smem_per_block=99 * 1024),
    90: ArchLimits(max_warps=64, max_blocks=32, smem_per_sm=228 * 1024, smem_per_block=227 * 1024),
}


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def occupancy(arch: int, regs_per_thread: int, smem_per_block: int, num_warps: int) -> dict:
    """Theoretical occupancy on one SM, as cudaOccupancyMaxActiveBlocksPerMultiprocessor.

    Follows the CUDA occupancy rules (CUDA C Programming Guide, "Occupancy Calculator" /
    cuda_occupancy.h ``cudaOccMaxActiveBlocksPerMultiprocessor``): the resident block count
    is the minimum of four limits:
      * warps:     floor(max_warps / warps_per_block)
      * blocks:    the per-SM block cap
      * registers: regs per warp = roundup(regs_per_thread * 32, 256); each of the 4
                   sub-partitions holds floor((regs_per_sm / 4) / regs_per_warp) warps, and
                   blocks = floor(4 * that / warps_per_block)
      * smem:      per block = roundup(static + dynamic + 1 KB reserved, 128);
                   blocks = floor(smem_per_sm / per block)
    A block that exceeds a per-block limit (255 regs/thread, 64K regs/block, the opt-in smem
    limit) cannot launch: 0 blocks. ``smem_per_block`` is the user shared memory (static +
    dynamic) without the reserved 1 KB. Occupancy = active warps / max warps per SM.
    """
    lim = ARCH_LIMITS[arch]
    regs_per_warp = _round_up(regs_per_thread * 32, lim.reg_alloc_unit)
    blocks_by_warps = lim.max_warps // num_warps
    if (
        regs_per_thread > lim.max_regs_per_thread
        # the hardware check assumes warps are spread over all 4 sub-partitions
        or regs_per_warp * _round_up(num_warps, lim.sub_partitions) > lim.regs_per_block
    ):
        blocks_by_regs = 0
    elif regs_per_warp == 0:
        blocks_by_regs = lim.max_blocks
    else:
        warps_per_sub = (lim.regs_per_sm // lim.sub_partitions) // regs_per_warp
        blocks_by_regs = warps_per_sub * lim.sub_partitions // num_warps
    smem_alloc = _round_up(smem_per_block + lim.smem_reserved_per_block, lim.smem_alloc_unit)
    if smem_per_block > lim.smem_per_block:
        blocks_by_smem = 0
    else:
        blocks_by_smem = lim.smem_per_sm // smem_alloc
    limits = {
        "warps": blocks_by_warps,
        "blocks": lim.max_blocks,
        "registers": blocks_by_regs,
        "shared_memory": blocks_by_smem,
    }
    blocks = min(limits.values())
    warps = blocks * num_warps
    return {
        "active_blocks": blocks,
        "active_warps": warps,
        "max_warps": lim.max_warps,
        "occupancy": warps / lim.max_warps,
        "limited_by": [k for k, v in limits.items() if v == blocks],
        "block_limits": limits,
        "regs_per_warp_alloc": regs_per_warp,
        "smem_per_block_alloc": smem_alloc,
    }


# --------------------------------------------------------------------------------------------
# AMD occupancy (waves per SIMD)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AmdLimits:
    family: str  # "cdna" or "rdna3" (hrm_fast.kernels.aot.target_family)
    wave_size: int
    max_waves_per_simd: int
    vgprs_per_simd: int  # per lane, the whole register file (CDNA: ArchVGPRs + AGPRs)
    vgpr_granule: int  # VGPRs are allocated per wave in blocks of this many
    max_vgprs_per_wave: int  # addressable by one wave (CDNA: 256 arch + 256 acc)
    lds_per_cu: int  # LDS shared by the workgroups on one CU (RDNA3: one WGP)
    lds_per_workgroup: int
    lds_granule: int = 512  # LDS is allocated in blocks of 128 dwords
    simds_per_cu: int = 4  # CDNA CU; RDNA3 WGP (two CUs of two SIMDs, WGP mode)
    barriers_per_cu: int = 16  # workgroups of more than one wave per CU (barrier slots)
    sgpr_limited: bool = False  # gfx9: 800 SGPRs per SIMD also limit waves


# From LLVM's AMDGPU backend, which computes occupancy for these targets
# (llvm/lib/Target/AMDGPU/Utils/AMDGPUBaseInfo.cpp, IsaInfo: getMaxWavesPerEU,
# getTotalNumVGPRs, getAddressableNumVGPRs, getVGPRAllocGranule, getEUsPerCU,
# getMaxWorkGroupsPerCU, getOccupancyWithNumSGPRs; GCNSubtarget: LDS doubles in WGP mode;
# AMDGPUUsage.rst: LDS granularity 128 dwords on GFX7-GFX12), cross-checked with AMD's
# "GPU specifications" table (rocm.docs.amd.com/reference/gpu-specs: MI300/MI200 64 KiB LDS
# and 512 KiB VGPR file per CU). Every compile also prints LLVM's own "; Occupancy:" line,
# which the static tests compare with amd_occupancy.
AMD_LIMITS: dict[str, AmdLimits] = {
    # CDNA2 (MI200) and CDNA3 (MI300): unified 512-entry VGPR file (ArchVGPRs + AGPRs) per
    # lane per SIMD, granule 8, at most 8 waves per SIMD, 64 KiB LDS per CU.
    "gfx90a": AmdLimits("cdna", 64, 8, 512, 8, 512, 65536, 65536, sgpr_limited=True),
    "gfx942": AmdLimits("cdna", 64, 8, 512, 8, 512, 65536, 65536, sgpr_limited=True),
    # RDNA3 Navi31 (RX 7900): 1536 VGPRs per lane in wave32 (1.5x register file), granule 24,
    # 256 addressable, 16 waves per SIMD, 128 KiB LDS per WGP (64 KiB per workgroup).
    "gfx1100": AmdLimits("rdna3", 32, 16, 1536, 24, 256, 131072, 65536, barriers_per_cu=32),
}


def _waves_with_sgprs(sgprs: int) -> int:
    # LLVM getOccupancyWithNumSGPRs for gfx8/gfx9 (800 SGPRs per SIMD, granule 16).
    if sgprs <= 80:
        return 10
    if sgprs <= 88:
        return 9
    if sgprs <= 100:
        return 8
    return 7


def amd_occupancy(arch: str, vgprs: int, sgprs: int, lds_per_workgroup: int, num_warps: int):
    """Theoretical waves per SIMD on one CU (WGP), as LLVM's AMDGPU backend computes them.

    ``vgprs`` is the kernel's total (``.vgpr_count``: ArchVGPRs aligned to 4 plus AGPRs on
    CDNA), ``num_warps`` the waves per workgroup. Resident workgroups per CU are the minimum of:
      * waves:     max_waves_per_simd * simds // waves_per_workgroup
      * barriers:  16 (CDNA) / 32 (RDNA3 WGP) workgroups, when a workgroup has > 1 wave
      * VGPRs:     waves per SIMD = vgprs_per_simd // roundup(vgprs, granule) (capped);
                   workgroups = that * simds // waves_per_workgroup
      * SGPRs:     gfx9 only, waves per SIMD from LLVM's SGPR table, as for VGPRs
      * LDS:       lds_per_cu // roundup(lds, 512 B)
    A workgroup over a per-workgroup limit (VGPRs per wave, LDS) cannot launch: 0.
    Waves per SIMD = workgroups * waves_per_workgroup / simds.
    """
    lim = AMD_LIMITS[arch]
    max_waves = lim.max_waves_per_simd
    simds = lim.simds_per_cu
    n = num_warps
    by_waves = max_waves * simds // n
    by_barriers = by_waves if n == 1 else lim.barriers_per_cu
    vgpr_alloc = _round_up(max(vgprs, 1), lim.vgpr_granule)
    waves_by_vgprs = 0 if vgprs > lim.max_vgprs_per_wave else lim.vgprs_per_simd // vgpr_alloc
    waves_by_sgprs = _waves_with_sgprs(sgprs) if lim.sgpr_limited else max_waves
    by_vgprs = min(waves_by_vgprs, max_waves) * simds // n
    by_sgprs = min(waves_by_sgprs, max_waves) * simds // n
    lds_alloc = _round_up(lds_per_workgroup, lim.lds_granule)
    if lds_per_workgroup > lim.lds_per_workgroup:
        by_lds = 0
    elif lds_alloc == 0:
        by_lds = by_waves
    else:
        by_lds = lim.lds_per_cu // lds_alloc
    limits = {
        "waves": by_waves,
        "barriers": by_barriers,
        "vgprs": by_vgprs,
        "sgprs": by_sgprs,
        "lds": by_lds,
    }
    blocks = min(limits.values())
    waves_per_simd = blocks * n / simds
    return {
        "active_blocks": blocks,
        "waves_per_simd": waves_per_simd,
        "max_waves_per_simd": max_waves,
        "occupancy": waves_per_simd / max_waves,
        "limited_by": [k for k, v in limits.items() if v == blocks],
        "block_limits": limits,
        # per SIMD from registers alone: what LLVM prints as "; Occupancy:" (no dynamic LDS)
        "register_waves_per_simd": min(waves_by_vgprs, waves_by_sgprs, max_waves),
        "vgprs_alloc": vgpr_alloc,
        "lds_alloc": lds_alloc,
    }


# --------------------------------------------------------------------------------------------
# AMDGCN inspection
# --------------------------------------------------------------------------------------------

_AMD_MMA_RE = re.compile(r"^\s+(v_(?:mfma|smfmac|wmma|swmmac)_\w+)", re.M)


def detect_amd_mma(amdgcn: str) -> list[str]:
    """Sorted matrix-core mnemonics (v_mfma_*, v_wmma_*) among the instructions of an AMDGCN
    listing (comments and metadata do not count)."""
    return sorted(set(_AMD_MMA_RE.findall(amdgcn)))


_AMD_META_KEYS = ("vgpr_count", "agpr_count", "sgpr_count", "vgpr_spill_count",
                  "sgpr_spill_count", "group_segment_fixed_size", "private_segment_fixed_size",
                  "wavefront_size")  # fmt: skip


def parse_amdgcn(amdgcn: str) -> dict[str, int]:
    """Kernel resources from the code-object metadata (amdhsa.kernels) of an AMDGCN listing,
    plus LLVM's own occupancy estimate ("; Occupancy: N", waves per SIMD)."""
    meta_start = amdgcn.find("amdhsa.kernels:")
    if meta_start < 0:
        raise ValueError("no amdhsa.kernels metadata in the AMDGCN listing")
    meta = amdgcn[meta_start:]
    out: dict[str, int] = {}
    for key in _AMD_META_KEYS:
        m = re.search(rf"^[\s-]*\.{key}:\s+(\d+)", meta, re.M)
        out[key] = int(m.group(1)) if m else 0  # .agpr_count is absent without AGPRs
    m = re.search(r"^; Occupancy: (\d+)", amdgcn, re.M)
    out["llvm_occupancy"] = int(m.group(1)) if m else 0
    return out


# --------------------------------------------------------------------------------------------
# Cubin inspection
# --------------------------------------------------------------------------------------------


def nvidia_tool(name: str) -> str:
    """Path of a CUDA binary tool shipped inside the triton wheel (cuobjdump, ptxas, ...)."""
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


_RES_RE = re.compile(r"\b(REG|STACK|SHARED|LOCAL):(\d+)")


def parse_resource_usage(text: str) -> dict[str, dict[str, int]]:
    """`cuobjdump --dump-resource-usage` output -> {function: {REG, STACK, SHARED, LOCAL}}."""
    out: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*Function\s+(\S+?):?\s*$", line)
        if m:
            current = m.group(1)
            continue
        if current is not None and "REG:" in line:
            out[current] = {k: int(v) for k, v in _RES_RE.findall(line)}
            current = None
    return out


def detect_mma(sass: str) -> list[str]:
    """Sorted MMA opcodes (HMMA, HGMMA, IMMA, ...) that appear in a SASS listing."""
    found = set()
    for m in re.finditer(r"\b([A-Z]+MMA)(?:\.|\s)", sass):
        op = m.group(1)
        if op in MMA_OPCODES:
            found.add(op)
    return sorted(found)


_PTXAS_SPILL_RE = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)


def parse_ptxas_log(log: str) -> dict[str, int] | None:
    m = _PTXAS_SPILL_RE.search(log or "")
    if not m:
        return None
    return {"stack_frame": int(m[1]), "spill_stores": int(m[2]), "spill_loads": int(m[3])}


def _jit_function(fn):
    """The triton.JITFunction behind an AotSpec.fn (unwraps autotune/heuristics wrappers)."""
    from triton.runtime.jit import JITFunction

    seen = 0
    while not isinstance(fn, JITFunction) and hasattr(fn, "fn") and seen < 8:
        fn = fn.fn
        seen += 1
    if not isinstance(fn, JITFunction):
        raise TypeError(f"AotSpec.fn is not a triton.jit kernel: {type(fn).__name__}")
    return fn


# --------------------------------------------------------------------------------------------
# Where a compile may run: this process only when Triton's interpreter has not touched it
# --------------------------------------------------------------------------------------------


def interpreter_state_in_process() -> list[str]:
    """triton.language attributes the interpreter has replaced in this process (empty if none).

    Triton 3.9's interpreter swaps triton.language builtins for interpreter versions while a
    kernel runs. The kernel's own swaps are undone afterwards (triton PR #8735), but a call
    to a jitted helper from triton.language.standard (tl.sigmoid, tl.sum, tl.max, ...)
    patches triton.language.core again and nothing undoes it. A later triton.compile in the
    same process then lowers tl.core builtins with the interpreter's semantic and fails
    (``'value' object has no attribute 'dtype'``) unless the Triton cache already holds the
    kernel. So no compile runs in a process where this list is non-empty.
    """
    import triton.language as tl

    leaked = []
    for owner, label in ((tl, "tl"), (tl.core, "tl.core"), (tl.math, "tl.math"),
                         (tl.core.tensor, "tl.tensor"), (tl.core.dtype, "tl.dtype")):  # fmt: skip
        for name, member in vars(owner).items():
            if getattr(member, "__module__", None) == "triton.runtime.interpreter":
                leaked.append(f"{label}.{name}")
    return leaked


def _compiles_in_process(fn) -> bool:
    """A real JITFunction, interpreter mode off and no interpreter patches left behind."""
    import triton

    try:
        _jit_function(fn)
    except TypeError:  # an InterpretedFunction: @triton.jit ran under TRITON_INTERPRET=1
        return False
    return not triton.knobs.runtime.interpret and not interpreter_state_in_process()


@dataclass(frozen=True)
class _SpecRef:
    """An AotSpec that crosses a process boundary: the kernel by module and qualified name."""

    module: str
    qualname: str
    fields: dict

    @classmethod
    def of(cls, spec) -> _SpecRef:
        fn = spec.fn
        for _ in range(8):  # unwrap JITFunction / InterpretedFunction / autotune to the def
            if not hasattr(fn, "fn"):
                break
            fn = fn.fn
        if "<locals>" in fn.__qualname__:
            raise ValueError(
                f"{spec.name}: kernel {fn.__qualname__} must be defined at module level"
            )
        fields = {k: getattr(spec, k) for k in spec.__dataclass_fields__ if k != "fn"}
        return cls(fn.__module__, fn.__qualname__, fields)

    def load(self):
        from hrm_fast.kernels.aot import AotSpec

        fn = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            fn = getattr(fn, part)
        return AotSpec(fn=fn, **self.fields)


_ISOLATED_POOL: ProcessPoolExecutor | None = None


def _isolated_compile(ref: _SpecRef, target) -> dict:
    try:
        return _compile_here(ref.load(), target)
    except Exception as exc:  # noqa: BLE001 - exception types may not unpickle in the parent
        raise RuntimeError(_short_error(exc, lines=12)) from None


def compile_spec(spec, arch) -> dict:
    """Compile one AotSpec for a GPU target and read its resources from the binary.

    Runs in this process when that is safe (see interpreter_state_in_process); otherwise in a
    spawned worker with TRITON_INTERPRET=0 that imports the kernel by name, so any caller
    (the test suite, which runs interpreted kernels first, or a notebook) gets the same result.
    Raises on a compile error (compile_all turns that into an error row).
    """
    if _compiles_in_process(spec.fn):
        return _compile_here(spec, arch)
    global _ISOLATED_POOL
    if _ISOLATED_POOL is None:
        ctx = multiprocessing.get_context("spawn")
        _ISOLATED_POOL = ProcessPoolExecutor(1, mp_context=ctx, initializer=_worker_init)
    return _ISOLATED_POOL.submit(_isolated_compile, _SpecRef.of(spec), arch).result()


def _compile_here(spec, arch) -> dict:
    if isinstance(arch, str):
        return _compile_amd(spec, arch)
    return _compile_nvidia(spec, arch)


def _compile_amd(spec, arch: str) -> dict:
    """Compile for an AMD target; resources from the AMDGCN listing's code-object metadata."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    lim = AMD_LIMITS[arch]
    fn = _jit_function(spec.fn)
    src = ASTSource(fn=fn, signature=dict(spec.signature), constexprs=dict(spec.constexprs))
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    t0 = time.perf_counter()
    kernel = triton.compile(src, target=GPUTarget("hip", arch, lim.wave_size), options=options)
    compile_s = time.perf_counter() - t0
    if not kernel.asm.get("hsaco"):
        raise RuntimeError(f"{spec.name}: no hsaco produced for {arch}")
    res = parse_amdgcn(kernel.asm["amdgcn"])
    lds_static = res["group_segment_fixed_size"]
    lds_dyn = int(kernel.metadata.shared)
    occ = amd_occupancy(arch, res["vgpr_count"], res["sgpr_count"], lds_static + lds_dyn,
                        spec.num_warps)  # fmt: skip
    return {
        "kernel": spec.name,
        "function": kernel.metadata.name,
        "arch": arch,
        "vendor": "amd",
        "num_warps": spec.num_warps,
        "num_stages": spec.num_stages,
        "constexprs": {k: _jsonable(v) for k, v in spec.constexprs.items()},
        "regs": res["vgpr_count"],
        "agprs": res["agpr_count"],
        "sgprs": res["sgpr_count"],
        "vgpr_spills": res["vgpr_spill_count"],
        "sgpr_spills": res["sgpr_spill_count"],
        "scratch_bytes": res["private_segment_fixed_size"],
        # Scratch (private segment) bytes per lane: where VGPR spills go. Triton kernels have
        # no private arrays, so any scratch is a spill; SGPR spills go to VGPR lanes instead
        # and are checked by count.
        "spill_bytes": res["private_segment_fixed_size"],
        "smem_static": lds_static,
        "smem_dynamic": lds_dyn,
        "mma": sorted({op.split("_")[1].upper() for op in detect_amd_mma(kernel.asm["amdgcn"])}),
        "mma_ops": detect_amd_mma(kernel.asm["amdgcn"]),
        "has_dot": bool(spec.has_dot),
        "occupancy": occ,
        "llvm_occupancy": res["llvm_occupancy"],
        "grid": list(spec.grid),
        "grid_blocks": math.prod(spec.grid) if spec.grid else None,
        "note": spec.note,
        "compile_s": round(compile_s, 3),
    }


def _compile_nvidia(spec, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _jit_function(spec.fn)
    src = ASTSource(fn=fn, signature=dict(spec.signature), constexprs=dict(spec.constexprs))
    target = GPUTarget("cuda", arch, 32)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    # Triton prints the ptxas -v log when asked; it is only there when ptxas actually ran
    # (not on a Triton cache hit), so the cubin (cuobjdump) stays the authority on spills.
    log = io.StringIO()
    old = os.environ.get("TRITON_DUMP_PTXAS_LOG")
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(src, target=target, options=options)
    finally:
        if old is None:
            os.environ.pop("TRITON_DUMP_PTXAS_LOG", None)
        else:
            os.environ["TRITON_DUMP_PTXAS_LOG"] = old
    compile_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="hrm_fast_aot_") as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        cuobjdump = nvidia_tool("cuobjdump")
        res_text = subprocess.run(
            [cuobjdump, "--dump-resource-usage", cubin], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run(
            [cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True
        ).stdout

    name = kernel.metadata.name
    usage = parse_resource_usage(res_text)
    if name not in usage:
        if len(usage) != 1:
            raise RuntimeError(f"no resource usage for {name} in cuobjdump output:\n{res_text}")
        usage = {name: next(iter(usage.values()))}
    res = usage[name]
    ptxas = parse_ptxas_log(log.getvalue())
    regs = res.get("REG", 0)
    local = res.get("LOCAL", 0)
    smem_static = res.get("SHARED", 0)
    smem_dyn = int(kernel.metadata.shared)
    mma = detect_mma(sass)
    # ptxas puts register spills in the stack frame (cuobjdump STACK), not in LOCAL, so both
    # count: Triton kernels have no local arrays or recursion, any local memory is a spill.
    spill = local + res.get("STACK", 0)
    if ptxas is not None:
        spill = max(spill, ptxas["spill_stores"] + ptxas["spill_loads"])
    occ = occupancy(arch, regs, smem_static + smem_dyn, spec.num_warps)
    return {
        "kernel": spec.name,
        "function": name,
        "arch": arch,
        "vendor": "nvidia",
        "num_warps": spec.num_warps,
        "num_stages": spec.num_stages,
        "constexprs": {k: _jsonable(v) for k, v in spec.constexprs.items()},
        "regs": regs,
        "local_bytes": local,
        "stack_bytes": res.get("STACK", 0),
        "spill_bytes": spill,
        "ptxas": ptxas,
        "smem_static": smem_static,
        "smem_dynamic": smem_dyn,
        "mma": mma,
        "has_dot": bool(spec.has_dot),
        "occupancy": occ,
        "grid": list(spec.grid),
        "grid_blocks": math.prod(spec.grid) if spec.grid else None,
        "note": spec.note,
        "compile_s": round(compile_s, 3),
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return repr(v)


# --------------------------------------------------------------------------------------------
# Spec collection and parallel compile
# --------------------------------------------------------------------------------------------


@dataclass
class SpecEntry:
    family: str
    preset: str
    index: int  # position in aot_specs(preset, target); -1 for an error or not-launched row
    spec: Any = None  # AotSpec, or None for an error or not-launched row
    error: str | None = None
    target: str = "nvidia"  # target family (hrm_fast.kernels.aot.TARGET_FAMILIES)
    not_launched: str | None = None  # why the family launches nothing on this target


def _load_specs(family: str, preset: str, target: str = "nvidia") -> list:
    """aot_specs(preset) for NVIDIA (the original contract), aot_specs(preset, target=...) for
    other families. An empty list is allowed off NVIDIA when the module says why in
    ``AOT_NOT_LAUNCHED[target]``."""
    mod = importlib.import_module(f"hrm_fast.kernels.{family}")
    if not hasattr(mod, "aot_specs"):
        raise AttributeError(f"hrm_fast.kernels.{family} has no aot_specs(preset)")
    if target == "nvidia":
        specs = list(mod.aot_specs(preset))
    else:
        specs = list(mod.aot_specs(preset, target=target))
    if not specs and target not in getattr(mod, "AOT_NOT_LAUNCHED", {}):
        raise ValueError(f"hrm_fast.kernels.{family}.aot_specs({preset!r}) returned no specs")
    return specs


def _short_error(exc: BaseException, lines: int = 6) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    if len(text) > lines:
        text = text[:2] + ["..."] + text[-(lines - 3) :]
    return " | ".join(t.strip() for t in text if t.strip())


def collect_specs(presets=PRESETS, families=FAMILIES, targets=("nvidia",)) -> list[SpecEntry]:
    """Every family's aot_specs(preset, target); a missing module or a failing aot_specs is an
    error row, a family that launches nothing on a target a not-launched row."""
    entries: list[SpecEntry] = []
    for target in targets:
        for family in families:
            for preset in presets:
                try:
                    specs = _load_specs(family, preset, target)
                except Exception as exc:  # noqa: BLE001 - reported as a row, never skipped
                    entries.append(
                        SpecEntry(family, preset, -1, error=_short_error(exc), target=target)
                    )
                    continue
                if not specs:
                    mod = importlib.import_module(f"hrm_fast.kernels.{family}")
                    why = mod.AOT_NOT_LAUNCHED[target]
                    entries.append(SpecEntry(family, preset, -1, target=target, not_launched=why))
                for i, spec in enumerate(specs):
                    entries.append(SpecEntry(family, preset, i, spec=spec, target=target))
    return entries


_WORKER_SPECS: dict[tuple[str, str, str], list] = {}


def _worker_init() -> None:
    # Real JITFunctions, not interpreter objects; must precede the family imports.
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _worker_compile(family: str, preset: str, index: int, name: str, arch) -> dict:
    try:
        key = (family, preset, target_family(arch))
        if key not in _WORKER_SPECS:
            _WORKER_SPECS[key] = _load_specs(*key)
        spec = _WORKER_SPECS[key][index]
        if spec.name != name:
            raise RuntimeError(f"aot_specs order differs between processes: {spec.name} != {name}")
        return compile_spec(spec, arch)
    except Exception as exc:  # noqa: BLE001 - becomes an error row
        return {"error": _short_error(exc, lines=12)}


def _fn_id(fn) -> str:
    seen = 0
    while hasattr(fn, "fn") and seen < 8:
        fn = fn.fn
        seen += 1
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _compile_key(entry: SpecEntry, arch) -> tuple:
    s = entry.spec
    return (
        _fn_id(s.fn),
        tuple(sorted(s.signature.items())),
        tuple(sorted((k, repr(v)) for k, v in s.constexprs.items())),
        s.num_warps,
        s.num_stages,
        arch,
    )


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _archs_of(entry: SpecEntry, archs) -> list:
    return [a for a in archs if target_family(a) == entry.target]


def compile_all(entries: list[SpecEntry], archs, workers: int | None = None) -> list[dict]:
    """Compile every (spec, arch) once in TRITON_INTERPRET=0 worker processes.

    Returns one row per (entry, arch) (one per error entry): the compile_spec dict plus
    family/preset/kernel, or an ``error`` field. Identical launch configurations (same kernel,
    signature, constexprs, warps, stages, arch) in several presets are compiled once.
    """
    archs = list(archs)
    workers = workers or default_workers()
    rows: list[dict] = []
    jobs: dict[tuple, Any] = {}
    ctx = multiprocessing.get_context("spawn")
    ok_entries = [e for e in entries if e.spec is not None]
    # Big (dot) kernels first so the slowest compiles overlap the rest.
    order = sorted(ok_entries, key=lambda e: not e.spec.has_dot)
    futures: dict[tuple, Any] = {}
    if ok_entries:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            for entry in order:
                for arch in _archs_of(entry, archs):
                    key = _compile_key(entry, arch)
                    if key not in jobs:
                        jobs[key] = pool.submit(
                            _worker_compile,
                            entry.family,
                            entry.preset,
                            entry.index,
                            entry.spec.name,
                            arch,
                        )
                    futures[(id(entry), arch)] = jobs[key]
            results = {k: f.result() for k, f in futures.items()}
    for entry in entries:
        if entry.error is not None:
            rows.append(
                {"family": entry.family, "preset": entry.preset, "kernel": "-", "arch": None,
                 "target": entry.target, "error": f"aot_specs: {entry.error}"}
            )  # fmt: skip
            continue
        if entry.not_launched is not None:
            rows.append(
                {"family": entry.family, "preset": entry.preset, "kernel": "-", "arch": None,
                 "target": entry.target, "not_launched": entry.not_launched}
            )  # fmt: skip
            continue
        for arch in _archs_of(entry, archs):
            res = dict(results[(id(entry), arch)])
            s = entry.spec
            # Per-entry fields (a shared compile keeps its own name, grid and note).
            res.update(
                family=entry.family, preset=entry.preset, kernel=s.name, arch=arch,
                target=entry.target,
                has_dot=bool(s.has_dot), grid=list(s.grid), note=s.note,
                grid_blocks=math.prod(s.grid) if s.grid else None,
            )  # fmt: skip
            rows.append(res)
    return rows


def row_failures(row: dict) -> list[str]:
    """Why a row fails the report (empty when it passes)."""
    where = f"{row.get('family')}/{row.get('kernel')} [{row.get('preset')}]"
    if row.get("arch") is not None:
        where += f" {arch_name(row['arch'])}"
    if "error" in row:
        return [f"{where}: compile failed: {row['error']}"]
    if row.get("not_launched"):
        return []
    out = []
    if row.get("vendor") == "amd":
        if row["spill_bytes"] > 0 or row["vgpr_spills"] > 0 or row["sgpr_spills"] > 0:
            out.append(
                f"{where}: spills: {row['vgpr_spills']} VGPRs, {row['sgpr_spills']} SGPRs, "
                f"scratch {row['spill_bytes']} B per lane (VGPRs={row['regs']})"
            )
        if row["has_dot"] and not row["mma"]:
            out.append(f"{where}: has_dot=True but no MFMA/WMMA instructions in the AMDGCN")
    elif row["spill_bytes"] > 0:
        p = row.get("ptxas")
        detail = f"; ptxas: {p['spill_stores']} B stores, {p['spill_loads']} B loads" if p else ""
        out.append(
            f"{where}: spills to local memory: stack {row['stack_bytes']} B, "
            f"local {row['local_bytes']} B per thread (regs={row['regs']}{detail})"
        )
    if row.get("vendor") != "amd" and row["has_dot"] and not row["mma"]:
        out.append(f"{where}: has_dot=True but no MMA (HMMA/HGMMA) instructions in the SASS")
    if row["occupancy"]["active_blocks"] == 0:
        occ = row["occupancy"]
        out.append(
            f"{where}: cannot launch (limited by {', '.join(occ['limited_by'])}; "
            f"regs={row['regs']}, smem={row['smem_static'] + row['smem_dynamic']} B)"
        )
    return out


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def arch_name(arch) -> str:
    return arch if isinstance(arch, str) else f"sm_{arch}"


def parse_arch(text: str) -> int | str:
    """``sm_80`` / ``80`` -> 80 (NVIDIA compute capability); ``gfx942`` -> "gfx942" (AMD)."""
    t = text.strip().lower()
    if t in AMD_LIMITS:
        return t
    m = re.fullmatch(r"(?:sm_?)?(\d+)a?", t)
    if not m or int(m.group(1)) not in ARCH_LIMITS:
        known = [f"sm_{a}" for a in ARCH_LIMITS] + list(AMD_LIMITS)
        raise argparse.ArgumentTypeError(
            f"unsupported arch {text!r}; choose from {', '.join(known)}"
        )
    return int(m.group(1))


def format_table(rows: list[dict]) -> str:
    # regs: registers per thread (NVIDIA) or VGPRs per lane incl. AGPRs ("total/AGPRs", AMD);
    # smem: shared memory (NVIDIA) or LDS (AMD), static / dynamic; occupancy: resident warps
    # per SM (NVIDIA) or waves per SIMD (AMD).
    head = ("kernel", "preset", "arch", "regs", "spill B", "smem/LDS B", "MMA", "occupancy",
            "grid", "note")  # fmt: skip
    lines = []
    for r in rows:
        kernel = f"{r['family']}/{r['kernel']}"
        arch = arch_name(r["arch"]) if r.get("arch") else r.get("target", "-")
        if "error" in r:
            lines.append((kernel, r["preset"], arch, "ERROR", "", "", "", "", "", r["error"][:80]))
            continue
        if "not_launched" in r:
            note = "not launched: " + r["not_launched"]
            lines.append((kernel, r["preset"], arch, "-", "", "", "", "", "", note))
            continue
        occ = r["occupancy"]
        if r.get("vendor") == "amd":
            regs = f"{r['regs']}/{r['agprs']}" if r["agprs"] else str(r["regs"])
            waves = f"{occ['waves_per_simd']:g}"
            occ_s = f"{waves}/{occ['max_waves_per_simd']} waves/SIMD ({occ['occupancy']:.0%})"
        else:
            regs = str(r["regs"])
            occ_s = f"{occ['active_warps']}/{occ['max_warps']} warps/SM ({occ['occupancy']:.0%})"
        grid = "x".join(str(g) for g in r["grid"]) if r["grid"] else "-"
        lines.append(
            (kernel, r["preset"], arch, regs, str(r["spill_bytes"]),
             f"{r['smem_static']}+{r['smem_dynamic']}", ",".join(r["mma"]) or "-", occ_s,
             grid, r["note"])
        )  # fmt: skip
    widths = [
        max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)
    ]
    fmt = lambda cols: "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()
    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths)), *(fmt(l) for l in lines)])


def environment() -> dict:
    import triton

    env = {
        "triton": triton.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import torch

        env["torch"] = torch.__version__
    except Exception:  # noqa: BLE001 - optional
        pass
    try:
        out = subprocess.run([nvidia_tool("ptxas"), "--version"], capture_output=True, text=True)
        env["ptxas"] = out.stdout.strip().splitlines()[-1]
    except Exception:  # noqa: BLE001 - optional
        pass
    return env


def run_report(archs=DEFAULT_ARCHS, presets=PRESETS, workers: int | None = None) -> dict:
    t0 = time.perf_counter()
    targets = [t for t in TARGET_FAMILIES if any(target_family(a) == t for a in archs)]
    entries = collect_specs(presets, targets=targets)
    rows = compile_all(entries, archs, workers)
    failures = [msg for r in rows for msg in row_failures(r)]
    return {
        "environment": environment(),
        "archs": [arch_name(a) for a in archs],
        "presets": list(presets),
        "rows": rows,
        "failures": failures,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, exit 2 (``--help`` still shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    from hrm_fast.errors import UserError
    from hrm_fast.files import prepare_dir, write_output

    p = _OneLineParser(
        prog="hrm-fast kernels-report",
        description="Ahead-of-time compile every Triton kernel spec and report registers, "
        "spills, shared memory, MMA use and occupancy. Exits 1 on any failure.",
    )
    p.add_argument("--arch", nargs="+", type=parse_arch, default=list(DEFAULT_ARCHS),
                   metavar="ARCH", help="targets: sm_80 sm_86 sm_89 sm_90 (NVIDIA), gfx90a "
                   "gfx942 gfx1100 (AMD) (default: sm_80 sm_86 sm_89 sm_90)")  # fmt: skip
    p.add_argument("--preset", nargs="+", choices=PRESETS, default=list(PRESETS))
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument(
        "--workers", type=int, default=None, help="compile processes (default min(2, cpus))"
    )
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        p.error(f"argument --workers: expected a whole number >= 1, got {args.workers}")
    try:  # before minutes of compiling, not after
        if args.json:
            json_path = Path(args.json)
            if json_path.is_dir():
                raise UserError(f"--json {json_path}: is a directory, expected a file path")
            prepare_dir(json_path.parent, "--json")
    except UserError as e:
        print(f"hrm-fast: {e}", file=sys.stderr)
        return e.exit_code

    report = run_report(args.arch, args.preset, args.workers)
    print(format_table(report["rows"]))
    if args.json:
        try:
            write_output(json_path, json.dumps(report, indent=2) + "\n")
        except UserError as e:
            print(f"hrm-fast: {e}", file=sys.stderr)
            return e.exit_code
    n = sum(1 for r in report["rows"] if "regs" in r)
    if report["failures"]:
        print(f"\nkernels-report: {len(report['failures'])} failure(s):", file=sys.stderr)
        for msg in report["failures"]:
            print(f"FAIL {msg}", file=sys.stderr)
        return 1
    print(f"\nkernels-report: {n} compiles OK, no spills ({report['wall_s']} s)")
    return 0


# CMake runs the report as `python -m hrm_fast.kernels.report` (CMakeLists.txt).
if __name__ == "__main__":
    sys.exit(main())
