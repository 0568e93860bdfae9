"""The compile driver: compile AotSpecs for GPU targets, in parallel, and judge the rows.

Compiles run in spawned worker processes with ``TRITON_INTERPRET=0``: under the interpreter
(the test suite sets it) ``@triton.jit`` returns interpreter objects that ``triton.compile``
cannot lower, so the workers re-import the family modules themselves.
"""

from __future__ import annotations

import datetime
import importlib
import math
import multiprocessing
import os
import platform
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from hrm_fast.kernels.aot import TARGET_FAMILIES, target_family

from .amd import compile_amd
from .nvidia import compile_nvidia, nvidia_tool
from .specs import PRESETS, SpecEntry, collect_specs, jit_function, load_specs, short_error

DEFAULT_ARCHS = (80, 86, 89, 90)


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
        jit_function(fn)
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
        raise RuntimeError(short_error(exc, lines=12)) from None


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
        return compile_amd(spec, arch)
    return compile_nvidia(spec, arch)


# --------------------------------------------------------------------------------------------
# Worker processes and the parallel compile
# --------------------------------------------------------------------------------------------

_WORKER_SPECS: dict[tuple[str, str, str], list] = {}


def _worker_init() -> None:
    # Real JITFunctions, not interpreter objects; must precede the family imports.
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _worker_compile(family: str, preset: str, index: int, name: str, arch) -> dict:
    try:
        key = (family, preset, target_family(arch))
        if key not in _WORKER_SPECS:
            _WORKER_SPECS[key] = load_specs(*key)
        spec = _WORKER_SPECS[key][index]
        if spec.name != name:
            raise RuntimeError(f"aot_specs order differs between processes: {spec.name} != {name}")
        return compile_spec(spec, arch)
    except Exception as exc:  # noqa: BLE001 - becomes an error row
        return {"error": short_error(exc, lines=12)}


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


# --------------------------------------------------------------------------------------------
# Judging rows, the whole report
# --------------------------------------------------------------------------------------------


def arch_name(arch) -> str:
    return arch if isinstance(arch, str) else f"sm_{arch}"


def row_failures(row: dict) -> list[str]:
    """Why a row fails the report (empty when it passes)."""
    where = f"{row.get('family')}/{row.get('kernel')} [{row.get('preset')}]"
    if row.get("arch") is not None:
        where += f" {arch_name(row['arch'])}"
    if "error" in row:
        return [f"{where}: compile failed: {row['error']}"]
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
