"""NVIDIA targets (sm_80/86/89/90): compile to cubin (TTIR -> TTGIR -> PTX -> ptxas) and read
it with the cuobjdump in the triton wheel: registers per thread, local-memory (spill) bytes,
static shared memory, MMA instructions in the SASS, plus Triton's dynamic shared memory."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import subprocess
import tempfile
import time

from .occupancy_model import occupancy
from .specs import constexprs_json, jit_function

MMA_OPCODES = ("HGMMA", "HMMA", "IMMA", "QGMMA", "IGMMA", "DMMA")  # sm_90 WGMMA -> *GMMA


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


def compile_nvidia(spec, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = jit_function(spec.fn)
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
        "constexprs": constexprs_json(spec),
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
