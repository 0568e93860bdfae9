"""Where a benchmark ran: GPU state (before and after), CPU, versions, git commit.

The GPU is read through NVML (NVIDIA); where NVML is absent or finds no GPU, through AMD SMI
(the ``amdsmi`` Python package of ROCm 6+) or else the ``rocm-smi --json`` command (AMD).
Every field is ``None`` where it does not apply (no GPU, no tool, a query failing), so a
result always says what it was measured on. Nothing here touches the GPU through torch.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shutil
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
        "torch_hip": getattr(torch.version, "hip", None),
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
    """GPU name, clock, power, memory, temperature (and NVIDIA's throttle reasons), or None."""
    for read in (_nvml_state, _amdsmi_state, _rocm_smi_state):
        state = read(index)
        if state is not None:
            return state
    return None


_GPU_FIELDS = ("name", "sm_clock_mhz", "sm_clock_max_mhz", "power_w", "power_limit_w",
               "temperature_c", "memory_used_bytes", "memory_total_bytes", "throttle_reasons",
               "driver")  # fmt: skip


def _opt(fn, *a):
    try:
        return fn(*a)
    except Exception:
        return None


def _amdsmi_state(index: int) -> dict | None:
    """AMD GPU through amdsmi (ROCm 6 units: clocks MHz, power W, VRAM MB, temperature C).
    sm_clock_* is the GFX (shader) clock; AMD has no throttle-reason bitmask here."""
    try:
        import amdsmi

        amdsmi.amdsmi_init()
    except Exception:
        return None
    try:
        h = amdsmi.amdsmi_get_processor_handles()[index]
        asic = _opt(amdsmi.amdsmi_get_gpu_asic_info, h) or {}
        clk = _opt(amdsmi.amdsmi_get_clock_info, h, amdsmi.AmdSmiClkType.GFX) or {}
        power = _opt(amdsmi.amdsmi_get_power_info, h) or {}
        vram = _opt(amdsmi.amdsmi_get_gpu_vram_usage, h) or {}
        temp = _opt(
            amdsmi.amdsmi_get_temp_metric,
            h,
            amdsmi.AmdSmiTemperatureType.EDGE,
            amdsmi.AmdSmiTemperatureMetric.CURRENT,
        )
        driver = _opt(amdsmi.amdsmi_get_gpu_driver_info, h) or {}
        mb = 1024 * 1024
        return {
            "vendor": "amd",
            "name": asic.get("market_name"),
            "sm_clock_mhz": _number(clk.get("clk")),
            "sm_clock_max_mhz": _number(clk.get("max_clk")),
            "power_w": _number(power.get("current_socket_power"))
            or _number(power.get("average_socket_power")),
            "power_limit_w": _number(power.get("power_limit")),
            "temperature_c": _number(temp),
            "memory_used_bytes": _scaled(vram.get("vram_used"), mb),
            "memory_total_bytes": _scaled(vram.get("vram_total"), mb),
            "throttle_reasons": None,
            "driver": driver.get("driver_version"),
        }
    except Exception:
        return None
    finally:
        _opt(amdsmi.amdsmi_shut_down)


def _number(v) -> float | None:
    """A number from an SMI value ("N/A", "45.0", "(1700Mhz)", 45) or None."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    m = re.search(r"-?\d+(?:\.\d+)?", str(v)) if v is not None else None
    return float(m.group(0)) if m else None


def _scaled(v, unit: int) -> int | None:
    n = _number(v)
    return None if n is None else int(n * unit)


def _rocm_smi_state(index: int) -> dict | None:
    """AMD GPU through ``rocm-smi --json`` (older ROCm without the amdsmi package)."""
    exe = shutil.which("rocm-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--showproductname", "--showtemp", "--showpower", "--showmaxpower",
             "--showmeminfo", "vram", "--showclocks", "--showdriverversion", "--json"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
        data = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    card = data.get(f"card{index}")
    if not isinstance(card, dict):
        return None

    def field(*words, without=None):
        # rocm-smi's keys vary by version ("Temperature (Sensor edge) (C)", ...): match words.
        for key, value in card.items():
            k = key.lower()
            if all(w in k for w in words) and not (without and without in k):
                return value
        return None

    driver = data.get("system", {}).get("Driver version") if isinstance(data, dict) else None
    return {
        "vendor": "amd",
        "name": field("card series") or field("card model"),
        "sm_clock_mhz": _number(field("sclk")),
        "sm_clock_max_mhz": None,
        "power_w": _number(field("power", "(w)", without="max")),
        "power_limit_w": _number(field("max graphics package power")),
        "temperature_c": _number(field("temperature", "edge")),
        "memory_used_bytes": _scaled(field("vram total used memory"), 1),
        "memory_total_bytes": _scaled(field("vram total memory"), 1),
        "throttle_reasons": None,
        "driver": driver,
    }


def _nvml_state(index: int) -> dict | None:
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
            "vendor": "nvidia",
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
