"""``hrm-fast check``: the start-up self-check on demand, as one JSON file for a bug report.

It runs ``hrm_fast.selfcheck.run_checks`` (never the cache) at a preset's shapes, with the
CUDA-graph replay on a GPU, and records where it ran: the bench's environment record
(``bench/env.py``: GPU, clocks, driver, versions) and the identity the cache is keyed by.
On a GPU whose check passed it also times each kernel family at the preset's training shapes
beside its datasheet-roofline floor (``hrm_fast.kernel_timing``). On a CPU the kernels run
under Triton's interpreter (no timings: they would time the interpreter); the CLI sets
``TRITON_INTERPRET=1`` before triton is imported.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from hrm_fast import kernel_timing, selfcheck
from hrm_fast.files import write_output
from hrm_fast.presets import from_name

BENCH_ENV = Path(__file__).resolve().parents[1] / "bench" / "env.py"
EXIT_CHECK_FAILED = 1
SCHEMA = 2  # bump when the file's layout changes
CPU_TIMES_NOTE = "kernel timings are GPU-only (on a CPU they would time Triton's interpreter)"


def environment(device: torch.device) -> dict:
    """The bench's environment record, or a note where the source tree is absent (a wheel)."""
    if not BENCH_ENV.is_file():
        return {"device": device.type, "note": f"{BENCH_ENV} not found (installed as a wheel)"}
    spec = importlib.util.spec_from_file_location("hrm_fast_bench_env", BENCH_ENV)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.environment(device.type)


def default_preset(device: torch.device) -> str:
    # The interpreter runs the seed preset's shapes for many minutes; debug's take seconds.
    return "seed" if device.type == "cuda" else "debug"


def kernel_times(cfg, device: torch.device, report: dict) -> dict:
    """The kernel timings on a GPU whose check passed; else a note saying why there are none."""
    if device.type != "cuda":
        return {"note": CPU_TIMES_NOTE}
    if not report["passed"]:
        return {"note": "kernel timings skipped: the self-check failed"}
    return kernel_timing.measure(cfg, device, torch.cuda.get_device_name(device))


def run(device: torch.device, preset: str | None, json_path: Path | None) -> int:
    preset = preset or default_preset(device)
    cfg = from_name(preset)
    cfg.train.cuda_graphs = device.type == "cuda"
    report = selfcheck.run_checks(cfg, device)
    times = kernel_times(cfg, device, report)
    record = {
        "schema": SCHEMA,
        "preset": preset,
        "identity": selfcheck.device_identity(device),
        "shapes": selfcheck.preset_shapes(cfg),
        "environment": environment(device),
        "selfcheck": report,
        "kernel_times": times,
    }
    print(report["summary"])
    print(times["note"] if "kernels" not in times else kernel_timing.format_times(times))
    if json_path is not None:
        write_output(json_path, json.dumps(record, indent=1, default=str) + "\n")
        print(f"wrote {json_path} (please attach it to a bug report)")
    return 0 if report["passed"] else EXIT_CHECK_FAILED
