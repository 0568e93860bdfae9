"""Theoretical occupancy from a kernel's resources: NVIDIA (warps per SM, the CUDA occupancy
rules) and AMD (waves per SIMD, the limits LLVM's AMDGPU backend uses)."""

from __future__ import annotations

from dataclasses import dataclass


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
