"""AMD targets (gfx90a, gfx942: CDNA, wave 64; gfx1100: RDNA3, wave 32): compile to hsaco and
read the AMDGCN listing's code-object metadata: VGPRs (with AGPRs), SGPRs, VGPR/SGPR spills,
scratch and LDS bytes, v_mfma_* / v_wmma_* instructions."""

from __future__ import annotations

import math
import re
import time

from .occupancy_model import AMD_LIMITS, amd_occupancy
from .specs import constexprs_json, jit_function

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


def compile_amd(spec, arch: str) -> dict:
    """Compile for an AMD target; resources from the AMDGCN listing's code-object metadata."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    lim = AMD_LIMITS[arch]
    fn = jit_function(spec.fn)
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
        "constexprs": constexprs_json(spec),
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
