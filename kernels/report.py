"""Ahead-of-time GPU compile report for every kernel family (no GPU needed).

Each family module exposes ``aot_specs(preset) -> list[AotSpec]``. For every spec and GPU
target we run ``triton.compile`` (the same pipeline a launch uses: TTIR -> TTGIR -> PTX ->
ptxas -> cubin) and read from the cubin what the hardware will see: registers per thread,
local-memory (spill) bytes, static shared memory, MMA instructions in the SASS, plus Triton's
dynamic shared memory request. From those we compute the theoretical occupancy with the CUDA
occupancy rules.

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
from typing import Any

FAMILIES = ("attention", "rms_norm", "swiglu", "arc_loss", "augment")
PRESETS = ("seed", "paper", "trm-arc1", "trm-arc2")
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
    """The triton.JITFunction behind an AotSpec.fn (unwraps autotune/heuristics wrappers).

    Under TRITON_INTERPRET=1 `@triton.jit` yields an InterpretedFunction; we rebuild a
    JITFunction from its Python function. That works for self-contained kernels only (jitted
    callees stay interpreted), which is why compile_all() compiles in TRITON_INTERPRET=0 workers.
    """
    from triton.runtime.jit import JITFunction

    seen = 0
    while not isinstance(fn, JITFunction) and hasattr(fn, "fn") and seen < 8:
        inner = fn.fn
        if type(fn).__name__ == "InterpretedFunction" and not hasattr(inner, "fn"):
            return JITFunction(inner)
        fn = inner
        seen += 1
    if not isinstance(fn, JITFunction):
        raise TypeError(f"AotSpec.fn is not a triton.jit kernel: {type(fn).__name__}")
    return fn


def compile_spec(spec, arch: int) -> dict:
    """Compile one AotSpec for sm_<arch> and read its resources from the cubin.

    Raises on a compile error (compile_all turns that into an error row).
    """
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
    index: int  # position in aot_specs(preset); -1 for an error row
    spec: Any = None  # AotSpec, or None for an error row
    error: str | None = None


def _load_specs(family: str, preset: str) -> list:
    mod = importlib.import_module(f"hrm_fast.kernels.{family}")
    if not hasattr(mod, "aot_specs"):
        raise AttributeError(f"hrm_fast.kernels.{family} has no aot_specs(preset)")
    specs = list(mod.aot_specs(preset))
    if not specs:
        raise ValueError(f"hrm_fast.kernels.{family}.aot_specs({preset!r}) returned no specs")
    return specs


def _short_error(exc: BaseException, lines: int = 6) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    if len(text) > lines:
        text = text[:2] + ["..."] + text[-(lines - 3) :]
    return " | ".join(t.strip() for t in text if t.strip())


def collect_specs(presets=PRESETS, families=FAMILIES) -> list[SpecEntry]:
    """Every family's aot_specs(preset); a missing module or a failing aot_specs is an error row."""
    entries: list[SpecEntry] = []
    for family in families:
        for preset in presets:
            try:
                specs = _load_specs(family, preset)
            except Exception as exc:  # noqa: BLE001 - reported as a row, never skipped
                entries.append(SpecEntry(family, preset, -1, error=_short_error(exc)))
                continue
            for i, spec in enumerate(specs):
                entries.append(SpecEntry(family, preset, i, spec=spec))
    return entries


_WORKER_SPECS: dict[tuple[str, str], list] = {}


def _worker_init() -> None:
    # Real JITFunctions, not interpreter objects; must precede the family imports.
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _worker_compile(family: str, preset: str, index: int, name: str, arch: int) -> dict:
    try:
        key = (family, preset)
        if key not in _WORKER_SPECS:
            _WORKER_SPECS[key] = _load_specs(family, preset)
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


def _compile_key(entry: SpecEntry, arch: int) -> tuple:
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


def compile_all(entries: list[SpecEntry], archs, workers: int | None = None) -> list[dict]:
    """Compile every (spec, arch) once in TRITON_INTERPRET=0 worker processes.

    Returns one row per (entry, arch) (one per error entry): the compile_spec dict plus
    family/preset/kernel, or an ``error`` field. Identical launch configurations (same kernel,
    signature, constexprs, warps, stages, arch) in several presets are compiled once.
    """
    archs = [int(a) for a in archs]
    workers = workers or default_workers()
    rows: list[dict] = []
    jobs: dict[tuple, Any] = {}
    ctx = multiprocessing.get_context("spawn")
    ok_entries = [e for e in entries if e.error is None]
    # Big (dot) kernels first so the slowest compiles overlap the rest.
    order = sorted(ok_entries, key=lambda e: not e.spec.has_dot)
    futures: dict[tuple, Any] = {}
    if ok_entries:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            for entry in order:
                for arch in archs:
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
                 "error": f"aot_specs: {entry.error}"}
            )  # fmt: skip
            continue
        for arch in archs:
            res = dict(results[(id(entry), arch)])
            s = entry.spec
            # Per-entry fields (a shared compile keeps its own name, grid and note).
            res.update(
                family=entry.family, preset=entry.preset, kernel=s.name, arch=arch,
                has_dot=bool(s.has_dot), grid=list(s.grid), note=s.note,
                grid_blocks=math.prod(s.grid) if s.grid else None,
            )  # fmt: skip
            rows.append(res)
    return rows


def row_failures(row: dict) -> list[str]:
    """Why a row fails the report (empty when it passes)."""
    where = f"{row.get('family')}/{row.get('kernel')} [{row.get('preset')}]"
    if row.get("arch") is not None:
        where += f" sm_{row['arch']}"
    if "error" in row:
        return [f"{where}: compile failed: {row['error']}"]
    out = []
    if row["spill_bytes"] > 0:
        p = row.get("ptxas")
        detail = f"; ptxas: {p['spill_stores']} B stores, {p['spill_loads']} B loads" if p else ""
        out.append(
            f"{where}: spills to local memory: stack {row['stack_bytes']} B, "
            f"local {row['local_bytes']} B per thread (regs={row['regs']}{detail})"
        )
    if row["has_dot"] and not row["mma"]:
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


def parse_arch(text: str) -> int:
    m = re.fullmatch(r"(?:sm_?)?(\d+)a?", text.strip().lower())
    if not m or int(m.group(1)) not in ARCH_LIMITS:
        raise argparse.ArgumentTypeError(
            f"unsupported arch {text!r}; choose from {', '.join(f'sm_{a}' for a in ARCH_LIMITS)}"
        )
    return int(m.group(1))


def format_table(rows: list[dict]) -> str:
    head = ("kernel", "preset", "arch", "regs", "spill B", "smem static B", "smem dyn B", "MMA",
            "occupancy", "grid", "note")  # fmt: skip
    lines = []
    for r in rows:
        kernel = f"{r['family']}/{r['kernel']}"
        arch = f"sm_{r['arch']}" if r.get("arch") else "-"
        if "error" in r:
            lines.append(
                (kernel, r["preset"], arch, "ERROR", "", "", "", "", "", "", r["error"][:80])
            )
            continue
        occ = r["occupancy"]
        occ_s = f"{occ['active_warps']}/{occ['max_warps']} ({occ['occupancy']:.0%})"
        grid = "x".join(str(g) for g in r["grid"]) if r["grid"] else "-"
        lines.append(
            (kernel, r["preset"], arch, str(r["regs"]), str(r["spill_bytes"]),
             str(r["smem_static"]), str(r["smem_dynamic"]), ",".join(r["mma"]) or "-", occ_s,
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
    entries = collect_specs(presets)
    rows = compile_all(entries, archs, workers)
    failures = [msg for r in rows for msg in row_failures(r)]
    return {
        "environment": environment(),
        "archs": [f"sm_{a}" for a in archs],
        "presets": list(presets),
        "rows": rows,
        "failures": failures,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="hrm-fast kernels-report",
        description="Ahead-of-time compile every Triton kernel spec and report registers, "
        "spills, shared memory, MMA use and occupancy. Exits 1 on any failure.",
    )
    p.add_argument("--arch", nargs="+", type=parse_arch, default=list(DEFAULT_ARCHS),
                   metavar="sm_XX", help="targets (default: sm_80 sm_86 sm_89 sm_90)")  # fmt: skip
    p.add_argument("--preset", nargs="+", choices=PRESETS, default=list(PRESETS))
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument(
        "--workers", type=int, default=None, help="compile processes (default min(2, cpus))"
    )
    args = p.parse_args(argv)

    report = run_report(args.arch, args.preset, args.workers)
    print(format_table(report["rows"]))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    n = len(report["rows"])
    if report["failures"]:
        print(f"\nkernels-report: {len(report['failures'])} failure(s):", file=sys.stderr)
        for msg in report["failures"]:
            print(f"FAIL {msg}", file=sys.stderr)
        return 1
    print(f"\nkernels-report: {n} compiles OK, no spills ({report['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
