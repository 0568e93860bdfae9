"""Static GPU checks: every kernel spec compiles ahead of time for sm_80/89/90 and for AMD
gfx942 (CDNA3) / gfx1100 (RDNA3) without spills, dot kernels use tensor cores (MMA / MFMA /
WMMA), plus unit checks of the report's occupancy arithmetic and instruction detection.

No GPU needed: triton.compile targets the GPU with the ptxas shipped in the triton wheel.
"""

import json
import os
import subprocess
import sys

import pytest
import triton
import triton.language as tl
from hrm_fast.kernels.aot import AotSpec

from hrm_fast import compile_report as report

pytestmark = pytest.mark.static

STATIC_ARCHS = (80, 89, 90)


# --------------------------------------------------------------------------------------------
# Every family, every preset, every arch (compiled once per session in worker processes)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aot_rows():
    entries = report.collect_specs(report.PRESETS)
    return report.compile_all(entries, STATIC_ARCHS)


def _family_rows(rows, family):
    return [r for r in rows if r["family"] == family]


@pytest.mark.parametrize("family", report.FAMILIES)
def test_family_has_specs_for_every_preset(aot_rows, family):
    rows = _family_rows(aot_rows, family)
    errors = [r["error"] for r in rows if "error" in r and r["arch"] is None]
    assert not errors, f"{family}: aot_specs failed: {errors}"
    for preset in report.PRESETS:
        assert any(r["preset"] == preset for r in rows), f"{family}: no specs for {preset!r}"


@pytest.mark.parametrize("arch", STATIC_ARCHS, ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize("family", report.FAMILIES)
def test_family_compiles_without_spills(aot_rows, family, arch):
    rows = [r for r in _family_rows(aot_rows, family) if r["arch"] == arch]
    assert rows, f"{family}: nothing compiled for sm_{arch} (see the aot_specs test)"
    failures = [msg for r in rows for msg in report.row_failures(r)]
    assert not failures, "\n".join(failures)
    for r in rows:
        assert r["spill_bytes"] == 0 and r["local_bytes"] == 0 and r["stack_bytes"] == 0
        assert 0 < r["regs"] <= 255
        if r["has_dot"]:
            assert r["mma"], f"{r['kernel']} [{r['preset']}] sm_{arch}: tl.dot without MMA"
        assert r["occupancy"]["active_blocks"] >= 1


# One target per AMD family keeps the suite's compile time modest (about a minute on 2 cores);
# gfx90a (CDNA2) is compiled by `hrm-fast kernels-report` and the CMake build (HRM_FAST_HIP_ARCHS).
STATIC_AMD_ARCHS = ("gfx942", "gfx1100")


@pytest.fixture(scope="module")
def aot_rows_amd():
    entries = report.collect_specs(report.PRESETS, targets=("cdna", "rdna3"))
    return report.compile_all(entries, STATIC_AMD_ARCHS)


@pytest.mark.parametrize("arch", STATIC_AMD_ARCHS)
@pytest.mark.parametrize("family", report.FAMILIES)
def test_family_compiles_without_spills_amd(aot_rows_amd, family, arch):
    target = report.target_family(arch)
    mine = [r for r in _family_rows(aot_rows_amd, family) if r.get("target") == target]
    assert mine, f"{family}: no specs or not-launched row for {target}"
    assert not [r["error"] for r in mine if "error" in r]
    rows = [r for r in mine if r["arch"] == arch]
    assert rows, f"{family}: nothing compiled for {arch}"
    failures = [msg for r in rows for msg in report.row_failures(r)]
    assert not failures, "\n".join(failures)
    for r in rows:
        assert r["spill_bytes"] == 0 and r["vgpr_spills"] == 0 and r["sgpr_spills"] == 0
        assert 0 < r["regs"] <= report.AMD_LIMITS[arch].max_vgprs_per_wave
        if r["has_dot"]:
            assert r["mma"] == (["WMMA"] if target == "rdna3" else ["MFMA"]), r["mma_ops"]
        assert r["occupancy"]["waves_per_simd"] > 0
        # Our register arithmetic agrees with LLVM's own occupancy for every kernel.
        assert r["occupancy"]["register_waves_per_simd"] == r["llvm_occupancy"], r


def test_attention_launched_on_every_family_and_head_dim_128(aot_rows, aot_rows_amd):
    # RDNA3 runs the attention kernels (with OPAQUE_TILES) at the presets' head dims 32 and
    # 64; head dim 128 is compiled with the paper preset wherever a family has rows for it.
    rows = [r for r in aot_rows + aot_rows_amd if r["family"] == "attention"]
    assert not [r for r in rows if "error" in r]
    for arch in (*STATIC_ARCHS, *STATIC_AMD_ARCHS):
        mine = [r for r in rows if r["arch"] == arch]
        names = {r["kernel"] for r in mine}
        assert names == {"attention_fwd", "attention_bwd_preprocess", "attention_bwd_dkdv",
                         "attention_bwd_dq"}, (arch, names)  # fmt: skip
        head_dims = {int(r["note"].split("D=")[1].split()[0]) for r in mine}
        assert head_dims == ({32, 64} if arch == "gfx1100" else {32, 64, 128}), arch
        opaque = {r["constexprs"].get("OPAQUE_TILES") for r in mine if r["has_dot"]}
        assert opaque == {arch == "gfx1100"}, arch


def test_attention_specs_declare_dot(aot_rows):
    # The MMA check only bites if the attention specs say they use tl.dot.
    rows = [r for r in _family_rows(aot_rows, "attention") if "error" not in r]
    assert any(r["has_dot"] for r in rows)


# --------------------------------------------------------------------------------------------
# Occupancy: hand-computed cases (CUDA occupancy rules, see report.occupancy)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, regs, smem, warps, blocks, limited_by",
    [
        # regs/warp = roundup(71*32, 256) = 2304; 16384 // 2304 = 7 warps per sub-partition
        # -> 28 warps -> 7 blocks; smem (16384 + 1024) -> 167936 // 17408 = 9 blocks
        (80, 71, 16384, 4, 7, ["registers"]),
        # 32 regs: 1024/warp -> 64 warps by regs; warps cap 48 // 4 = 12 blocks
        (86, 32, 0, 4, 12, ["warps"]),
        # 128 regs: 4096/warp -> 4 per sub-partition -> 16 warps -> 4 blocks of 4 warps
        (80, 128, 0, 4, 4, ["registers"]),
        # 255 regs -> 8192/warp -> 2 per sub-partition -> 8 warps -> 1 block of 8;
        # smem roundup(100000 + 1024, 128) = 101120 -> 233472 // 101120 = 2
        (90, 255, 100000, 8, 1, ["registers"]),
        # 40 regs: 1280/warp -> 12 per sub-partition -> 48 warps -> 6 blocks (= warps cap 6);
        # smem 61440 + 1024 -> 102400 // 62464 = 1
        (89, 40, 60 * 1024, 8, 1, ["shared_memory"]),
        # 16 regs, 1 warp: 32 resident blocks cap on sm_80 (warps would allow 64)
        (80, 16, 0, 1, 32, ["blocks"]),
        # 16 blocks cap on sm_86 vs 24 on sm_89 (warps would allow 48)
        (86, 16, 0, 1, 16, ["blocks"]),
        (89, 16, 0, 1, 24, ["blocks"]),
        # Over the 99 KB per-block opt-in limit on sm_86: cannot launch.
        (86, 32, 100 * 1024, 4, 0, ["shared_memory"]),
        # Exactly the 227 KB limit on sm_90: one block (227 KB + 1 KB reserved = 228 KB).
        (90, 32, 227 * 1024, 4, 1, ["shared_memory"]),
        # 255 regs x 16 warps = 128K registers > 64K per block: cannot launch.
        (80, 255, 0, 16, 0, ["registers"]),
    ],
)
def test_occupancy_hand_computed(arch, regs, smem, warps, blocks, limited_by):
    occ = report.occupancy(arch, regs, smem, warps)
    assert occ["active_blocks"] == blocks, occ
    assert occ["active_warps"] == blocks * warps
    assert occ["occupancy"] == pytest.approx(blocks * warps / report.ARCH_LIMITS[arch].max_warps)
    assert occ["limited_by"] == limited_by, occ


def test_occupancy_fraction_example():
    occ = report.occupancy(80, 71, 16384, 4)
    assert (occ["active_warps"], occ["max_warps"]) == (28, 64)
    assert occ["occupancy"] == pytest.approx(0.4375)


# --------------------------------------------------------------------------------------------
# AMD occupancy in waves per SIMD: hand-computed cases (limits in report.AMD_LIMITS)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, vgprs, sgprs, lds, warps, waves_per_simd, limited_by",
    [
        # roundup(262, 8) = 264 -> 512 // 264 = 1 wave/SIMD -> 1 * 4 SIMDs // 4 waves = 1 WG;
        # LDS 65536 // 12288 = 5 WGs; SGPRs 83 -> 9 waves (capped at 8)
        ("gfx942", 262, 83, 12288, 4, 1, ["vgprs"]),
        # 8 waves of 204 VGPRs: 512 // 208 = 2 per SIMD -> 2 * 4 // 8 = 1 WG = 2 waves/SIMD
        ("gfx942", 204, 60, 10240, 8, 2, ["vgprs"]),
        # 28 VGPRs -> 512 // 32 = 16, capped at 8 waves/SIMD; LDS 256 B -> 512 B granule
        ("gfx90a", 28, 24, 256, 4, 8, ["waves", "vgprs", "sgprs"]),
        # gfx9 SGPR table: 102 SGPRs -> 7 waves/SIMD -> 28 one-wave workgroups
        ("gfx90a", 32, 102, 0, 1, 7, ["sgprs"]),
        # LDS roundup(40000, 512) = 40448 -> 65536 // 40448 = 1 WG of 4 waves = 1 wave/SIMD
        ("gfx942", 64, 40, 40000, 4, 1, ["lds"]),
        # over the 64 KiB per workgroup / the 512 VGPRs per wave: cannot launch
        ("gfx942", 64, 40, 65537, 4, 0, ["lds"]),
        ("gfx942", 520, 40, 0, 4, 0, ["vgprs"]),
        # RDNA3: roundup(239, 24) = 240 -> 1536 // 240 = 6 per SIMD -> 6 WGs; LDS 128 KiB per
        # WGP // 43008 = 3 WGs -> 3 * 4 / 4 = 3 waves/SIMD (SGPRs never limit on gfx10+)
        ("gfx1100", 239, 50, 43008, 4, 3, ["lds"]),
        # 256 VGPRs -> 264 -> 5 per SIMD; 8 waves per WG -> 5 * 4 // 8 = 2 WGs = 4 waves/SIMD
        ("gfx1100", 256, 50, 0, 8, 4, ["vgprs"]),
        # 20 VGPRs -> 24 -> 64, capped at 16 waves/SIMD
        ("gfx1100", 20, 30, 0, 1, 16, ["waves", "barriers", "vgprs", "sgprs", "lds"]),
    ],
)
def test_amd_occupancy_hand_computed(arch, vgprs, sgprs, lds, warps, waves_per_simd, limited_by):
    occ = report.amd_occupancy(arch, vgprs, sgprs, lds, warps)
    assert occ["waves_per_simd"] == waves_per_simd, occ
    assert occ["limited_by"] == limited_by, occ
    max_waves = report.AMD_LIMITS[arch].max_waves_per_simd
    assert occ["occupancy"] == pytest.approx(waves_per_simd / max_waves)


def test_amd_register_waves_like_llvm():
    # LLVM prints "; Occupancy: 1" for 262 VGPRs on gfx942 and 5 for 256 on gfx1100.
    assert report.amd_occupancy("gfx942", 262, 83, 0, 4)["register_waves_per_simd"] == 1
    assert report.amd_occupancy("gfx1100", 256, 64, 0, 4)["register_waves_per_simd"] == 5


_AMDGCN_SNIPPET = """
\tv_mfma_f32_32x32x8_bf16 a[0:15], v[2:3], v[4:5], 0
\tv_mfma_f32_16x16x16_bf16 v[0:3], v[6:7], v[8:9], v[0:3]
; v_wmma_f32_16x16x16_bf16 named in a comment is no instruction
; NumVgprs: 256
; Occupancy: 2
\t.amdgpu_metadata
---
amdhsa.kernels:
  - .agpr_count:     6
    .group_segment_fixed_size: 0
    .private_segment_fixed_size: 156
    .sgpr_count:     72
    .sgpr_spill_count: 0
    .vgpr_count:     256
    .vgpr_spill_count: 38
    .wavefront_size: 64
"""


def test_parse_amdgcn_and_detect_mfma():
    res = report.parse_amdgcn(_AMDGCN_SNIPPET)
    assert res == {
        "vgpr_count": 256, "agpr_count": 6, "sgpr_count": 72, "vgpr_spill_count": 38,
        "sgpr_spill_count": 0, "group_segment_fixed_size": 0, "private_segment_fixed_size": 156,
        "wavefront_size": 64, "llvm_occupancy": 2,
    }  # fmt: skip
    assert report.detect_amd_mma(_AMDGCN_SNIPPET) == [
        "v_mfma_f32_16x16x16_bf16",
        "v_mfma_f32_32x32x8_bf16",
    ]
    assert report.detect_amd_mma("\tv_fma_f32 v1, v2, v3, v4\n") == []
    row = {"family": "toy", "kernel": "k", "preset": "seed", "arch": "gfx942", "vendor": "amd",
           "spill_bytes": 156, "vgpr_spills": 38, "sgpr_spills": 0, "regs": 256, "has_dot": True,
           "mma": [], "occupancy": {"active_blocks": 1}}  # fmt: skip
    spill, no_mma = report.row_failures(row)
    assert "38 VGPRs" in spill and "gfx942" in spill and "MFMA/WMMA" in no_mma


def test_parse_arch_amd():
    assert [report.parse_arch(a) for a in ("gfx942", "GFX90A", "gfx1100")] == [
        "gfx942",
        "gfx90a",
        "gfx1100",
    ]
    with pytest.raises(Exception, match="unsupported arch"):
        report.parse_arch("gfx803")


@pytest.mark.parametrize(
    "arch, expected", [("gfx942", ["MFMA"]), ("gfx90a", ["MFMA"]), ("gfx1100", ["WMMA"])]
)
def test_matrix_cores_in_toy_dot_amd(arch, expected):
    row = report.compile_spec(TOY_DOT, arch)
    assert row["mma"] == expected, row["mma_ops"]
    assert row["spill_bytes"] == 0 and row["vgpr_spills"] == 0
    assert row["occupancy"]["register_waves_per_simd"] == row["llvm_occupancy"]
    assert report.row_failures(dict(row, family="toy", preset="-")) == []


# --------------------------------------------------------------------------------------------
# MMA detection and resource parsing on toy kernels compiled in-process
# --------------------------------------------------------------------------------------------


@triton.jit
def _toy_dot_kernel(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    offs = r[:, None] * BLOCK + r[None, :]
    c = tl.dot(tl.load(a_ptr + offs), tl.load(b_ptr + offs))
    tl.store(c_ptr + offs, c.to(tl.bfloat16))


@triton.jit
def _toy_scale_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * 2.0, mask=mask)


TOY_DOT = AotSpec(
    name="toy_dot",
    fn=_toy_dot_kernel,
    signature={"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*bf16", "BLOCK": "constexpr"},
    constexprs={"BLOCK": 64},
    grid=(1,),
    note="64x64x64 bf16",
    has_dot=True,
)
TOY_SCALE = AotSpec(
    name="toy_scale",
    fn=_toy_scale_kernel,
    signature={"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"},
    constexprs={"BLOCK": 1024},
    grid=(7,),
)


@pytest.mark.parametrize(
    "arch, expected",
    [(80, ["HMMA"]), (89, ["HMMA"]), (90, ["HGMMA"])],
    ids=["sm_80", "sm_89", "sm_90"],
)
def test_mma_detected_in_toy_dot(arch, expected):
    row = report.compile_spec(TOY_DOT, arch)
    assert row["mma"] == expected, row["mma"]
    assert row["spill_bytes"] == 0
    assert row["smem_dynamic"] > 0  # operands are staged through shared memory
    assert report.row_failures(row) == []


@pytest.mark.parametrize("arch", STATIC_ARCHS, ids=lambda a: f"sm_{a}")
def test_no_mma_in_toy_elementwise(arch):
    row = report.compile_spec(TOY_SCALE, arch)
    assert row["mma"] == []
    assert 0 < row["regs"] <= 64
    assert row["spill_bytes"] == 0
    assert row["grid_blocks"] == 7
    occ = report.occupancy(arch, row["regs"], row["smem_static"] + row["smem_dynamic"], 4)
    assert row["occupancy"] == occ


def test_detect_mma_on_sass_lines():
    sass = """
        /*0a90*/   HMMA.16816.F32.BF16 R12, R32.reuse, R16, RZ ;
        /*0aa0*/   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4].tnspB, RZ, !UPT ;
        /*0ab0*/   IMMA.16832.S8.S8 R4, R8, R12, R4 ;
        /*0ac0*/   FFMA R1, R2, R3, R4 ;  // a comment mentioning HMMA_like names is no match
    """
    assert report.detect_mma(sass) == ["HGMMA", "HMMA", "IMMA"]
    assert report.detect_mma("FFMA R1, R2, R3, R4 ;\nLDG.E R2, [R4] ;") == []


def test_parse_resource_usage():
    text = """
Resource usage:
 Common:
  GLOBAL:0
 Function _attn_bwd_kernel:
  REG:255 STACK:384 SHARED:1024 LOCAL:0 CONSTANT[0]:568 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    usage = report.parse_resource_usage(text)
    assert usage == {"_attn_bwd_kernel": {"REG": 255, "STACK": 384, "SHARED": 1024, "LOCAL": 0}}


def test_ptxas_log_and_spill_failure():
    log = "    384 bytes stack frame, 400 bytes spill stores, 380 bytes spill loads\n"
    assert report.parse_ptxas_log(log) == {
        "stack_frame": 384,
        "spill_stores": 400,
        "spill_loads": 380,
    }
    assert report.parse_ptxas_log("ptxas info    : Used 12 registers") is None
    row = report.compile_spec(TOY_SCALE, 80)
    spilled = dict(row, family="toy", preset="seed", stack_bytes=384, spill_bytes=384)
    (msg,) = report.row_failures(spilled)
    assert "spills" in msg and "sm_80" in msg
    no_mma = dict(row, family="toy", preset="seed", has_dot=True)
    (msg,) = report.row_failures(no_mma)
    assert "no MMA" in msg


# Issue 8: on a fresh machine (empty Triton cache) compiles failed after interpreted kernels had
# run in the same process. The script runs an interpreted kernel that calls tl.sigmoid (a jitted
# helper whose interpreter patches Triton 3.9 never undoes), compiles one of those interpreted
# kernels, then switches the interpreter off and compiles a freshly imported real JITFunction.
# Both must compile from an empty cache.
_TOY_MODULE = """
import triton
import triton.language as tl


@triton.jit
def toy_expand_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    offs = r[:, None] * BLOCK + r[None, :]
    tl.store(y_ptr + offs, tl.load(x_ptr + offs) * 2.0)
"""

_FRESH_CACHE_SCRIPT = r"""
import json, os, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch
from hrm_fast import compile_report as report
from hrm_fast.kernels import swiglu
from hrm_fast.kernels.aot import AotSpec
swiglu._swiglu_fwd(torch.randn(3, 2 * 80))
leaked = report.interpreter_state_in_process()
fwd, _ = swiglu.aot_specs(report.PRESET_SHAPES["seed"])
rows = [report.compile_spec(fwd, 80)]
os.environ["TRITON_INTERPRET"] = "0"
import toy_kernels_issue8 as toy
sig = {"x_ptr": "*fp32", "y_ptr": "*fp32", "BLOCK": "constexpr"}
spec = AotSpec("toy_expand", toy.toy_expand_kernel, sig, {"BLOCK": 32}, grid=(1,))
rows.append(report.compile_spec(spec, 80))
print(json.dumps({"leaked": leaked, "rows": rows}))
"""


def test_compile_after_interpreted_kernels_with_empty_cache(tmp_path):
    (tmp_path / "toy_kernels_issue8.py").write_text(_TOY_MODULE)
    cache = tmp_path / "triton-cache"
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, TRITON_CACHE_DIR=str(cache), PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_CACHE_SCRIPT], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for row in out["rows"]:
        failures = report.row_failures(dict(row, family="toy", preset="-"))
        assert failures == [] and row["regs"] > 0, (failures, out["leaked"])
    assert any(cache.iterdir())  # compiled from the empty cache, not served by a warm one


def test_missing_family_is_an_error_row():
    entries = report.collect_specs(("seed",), families=("no_such_family",))
    assert len(entries) == 1 and entries[0].error and entries[0].spec is None
    (row,) = report.compile_all(entries, (80,))
    assert "error" in row
    (msg,) = report.row_failures(row)
    assert "no_such_family" in msg


def test_parse_arch():
    assert [report.parse_arch(a) for a in ("sm_80", "86", "sm89", "sm_90a")] == [80, 86, 89, 90]
    with pytest.raises(Exception, match="unsupported arch"):
        report.parse_arch("sm_75")


def test_report_runs_as_a_module():
    # CMakeLists.txt runs `python -m hrm_fast.compile_report`; without the __main__ entry
    # point that command did nothing and the build failed on the missing JSON.
    proc = subprocess.run(
        [sys.executable, "-m", "hrm_fast.compile_report", "--arch", "sm_99"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "unsupported arch" in proc.stderr, proc.stderr
