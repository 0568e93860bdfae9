"""Where a benchmark ran: GPU state from NVML (before and after), CPU, versions, git commit.

Every field is ``None`` where it does not apply (no GPU, NVML missing or failing), so a result
always says what it was measured on. Nothing here touches CUDA through torch.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:
        return None


@functools.lru_cache(maxsize=1)
def static_env() -> dict:
    """Facts that do not change during a session."""
    import torch

    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "hostname": platform.node(),
    }


_THROTTLE_BITS = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}


def gpu_state(index: int = 0) -> dict | None:
    """GPU name, SM clock, power, memory, temperature and throttle reasons, or None."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(h)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)

        def opt(fn, *a):
            try:
                return fn(*a)
            except Exception:
                return None

        reasons = opt(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, h)
        power = opt(pynvml.nvmlDeviceGetPowerUsage, h)
        limit = opt(pynvml.nvmlDeviceGetEnforcedPowerLimit, h)
        return {
            "name": name.decode() if isinstance(name, bytes) else name,
            "sm_clock_mhz": opt(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
            "sm_clock_max_mhz": opt(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
            "power_w": power / 1000 if power is not None else None,
            "power_limit_w": limit / 1000 if limit is not None else None,
            "temperature_c": opt(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
            "memory_used_bytes": int(mem.used),
            "memory_total_bytes": int(mem.total),
            "throttle_reasons": None
            if reasons is None
            else [k for k, bit in _THROTTLE_BITS.items() if reasons & bit],
            "driver": opt(pynvml.nvmlSystemGetDriverVersion),
        }
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def environment(device: str) -> dict:
    """The whole record: static facts + the GPU's state now (``None`` on CPU)."""
    return {"device": device, **static_env(), "gpu": gpu_state() if device == "cuda" else None}
