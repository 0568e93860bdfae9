"""bench/env.py reads the GPU through NVML, else AMD SMI (amdsmi), else rocm-smi; every field is
None where no tool answers. The tools are faked here: no GPU is needed."""

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_env", Path(__file__).resolve().parents[2] / "bench" / "env.py"
)
env = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(env)


@pytest.fixture
def no_tools(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails: no NVML
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    monkeypatch.setattr(env.shutil, "which", lambda name: None)


def test_no_gpu_tool_gives_none(no_tools):
    assert env.gpu_state() is None
    assert env.environment("cuda")["gpu"] is None


def _fake_amdsmi():
    m = types.SimpleNamespace()
    m.AmdSmiClkType = types.SimpleNamespace(GFX="gfx")
    m.AmdSmiTemperatureType = types.SimpleNamespace(EDGE="edge")
    m.AmdSmiTemperatureMetric = types.SimpleNamespace(CURRENT="current")
    m.amdsmi_init = lambda: None
    m.amdsmi_shut_down = lambda: None
    m.amdsmi_get_processor_handles = lambda: ["gpu0"]
    m.amdsmi_get_gpu_asic_info = lambda h: {"market_name": "AMD Instinct MI300X"}
    m.amdsmi_get_clock_info = lambda h, kind: {"clk": 2100, "max_clk": 2100, "min_clk": 500}
    m.amdsmi_get_power_info = lambda h: {"current_socket_power": 612, "power_limit": 750}
    m.amdsmi_get_gpu_vram_usage = lambda h: {"vram_used": 1024, "vram_total": 196592}

    def temp(h, sensor, metric):
        assert (sensor, metric) == ("edge", "current")
        return 41

    def driver(h):
        raise RuntimeError("AMDSMI_STATUS_NOT_SUPPORTED")  # one failing query -> None

    m.amdsmi_get_temp_metric = temp
    m.amdsmi_get_gpu_driver_info = driver
    return m


def test_amdsmi_where_nvml_is_absent(no_tools, monkeypatch):
    monkeypatch.setitem(sys.modules, "amdsmi", _fake_amdsmi())
    state = env.gpu_state()
    assert state == {
        "vendor": "amd", "name": "AMD Instinct MI300X", "sm_clock_mhz": 2100,
        "sm_clock_max_mhz": 2100, "power_w": 612, "power_limit_w": 750, "temperature_c": 41,
        "memory_used_bytes": 1024 * 2**20, "memory_total_bytes": 196592 * 2**20,
        "throttle_reasons": None, "driver": None,
    }  # fmt: skip
    assert set(state) == {"vendor", *env._GPU_FIELDS}


def test_rocm_smi_json_where_amdsmi_is_absent(no_tools, monkeypatch):
    out = {
        "card0": {
            "Card series": "Radeon RX 7900 XTX",
            "Temperature (Sensor edge) (C)": "45.0",
            "Max Graphics Package Power (W)": "327.0",
            "Current Socket Graphics Package Power (W)": "58.0",
            "sclk clock speed:": "(1700Mhz)",
            "VRAM Total Memory (B)": "25753026560",
            "VRAM Total Used Memory (B)": "1073741824",
        },
        "system": {"Driver version": "6.8.5"},
    }
    monkeypatch.setattr(env.shutil, "which", lambda name: "/opt/rocm/bin/rocm-smi")

    def run(cmd, **kw):
        assert cmd[0] == "/opt/rocm/bin/rocm-smi" and "--json" in cmd
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(out), stderr="")

    monkeypatch.setattr(env.subprocess, "run", run)
    state = env.gpu_state()
    assert state["name"] == "Radeon RX 7900 XTX" and state["vendor"] == "amd"
    assert (state["temperature_c"], state["power_w"], state["power_limit_w"]) == (45, 58, 327)
    assert state["sm_clock_mhz"] == 1700 and state["sm_clock_max_mhz"] is None
    assert (state["memory_used_bytes"], state["memory_total_bytes"]) == (2**30, 25753026560)
    assert state["driver"] == "6.8.5" and state["throttle_reasons"] is None


def test_rocm_smi_failure_gives_none(no_tools, monkeypatch):
    monkeypatch.setattr(env.shutil, "which", lambda name: "/opt/rocm/bin/rocm-smi")

    def run(cmd, **kw):
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(env.subprocess, "run", run)
    assert env.gpu_state() is None
