"""``--compile auto``: which runs compile, and a compile that fails costs speed, not the run."""

from __future__ import annotations

import pytest
import torch

from hrm_fast import device as device_mod
from hrm_fast.errors import UserError
from hrm_fast.presets import from_name
from hrm_fast.roofline import step_flops

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _train(compile_: str, steps: int, preset: str = "seed"):
    cfg = from_name(preset)
    cfg.train.compile, cfg.train.steps = compile_, steps
    return cfg


def _resolve(cfg, device=CPU, backend="reference"):
    return device_mod.resolve_compile(cfg.train, device, backend, step_flops(cfg)["total"])


def _steps_for(work: float, cfg=None) -> float:
    return work / step_flops(cfg or from_name("seed"))["total"]


@pytest.fixture
def compiler(monkeypatch):
    monkeypatch.setattr(device_mod, "cxx_compiler", lambda: "/usr/bin/g++")


@pytest.fixture
def no_compiler(monkeypatch):
    monkeypatch.setattr(device_mod, "cxx_compiler", lambda: None)


def test_auto_compiles_long_cpu_runs_only(compiler):
    n = int(_steps_for(device_mod.CPU_COMPILE_MIN_FLOPS)) + 1
    assert _resolve(_train("auto", n), CPU, "reference")[0] is True
    assert _resolve(_train("auto", n - 2), CPU, "reference")[0] is False
    # The work decides, not the step count: sudoku-cpu's 1200 small steps stay eager
    # (compiling them was measured to cost more than it saved), maze-cpu's 600 compile.
    assert _resolve(from_name("sudoku-cpu"), CPU, "reference")[0] is False
    assert _resolve(from_name("maze-cpu"), CPU, "reference")[0] is True
    for short in ("smoke", "trm-smoke", "collapse", "debug", "board-debug"):
        assert _resolve(from_name(short), CPU, "reference")[0] is False
    # GPU runs keep their default (fused kernels, CUDA graphs): auto never compiles them.
    assert _resolve(_train("auto", 10**6), CUDA, "fused")[0] is False
    assert _resolve(_train("auto", 10**6), CUDA, "reference")[0] is False
    assert _resolve(_train("false", 10**6), CPU, "reference")[0] is False
    assert _resolve(_train("true", 1), CPU, "reference")[0] is True


def test_no_compiler(no_compiler):
    compiled, why = _resolve(_train("auto", 10**6), CPU, "reference")
    assert not compiled and "no C++ compiler" in why
    with pytest.raises(UserError, match="--compile true: .*no compiler"):
        _resolve(_train("true", 10), CPU, "reference")
    assert _resolve(_train("true", 10), CUDA, "fused")[0] is True


def test_config_written_before_auto_still_loads():
    from hrm_fast.config import RunConfig

    d = RunConfig().to_dict()
    for old, new in ((True, "true"), (False, "false")):
        d["train"]["compile"] = old
        assert RunConfig.from_dict(d).train.compile == new


def test_failed_auto_compile_falls_back_to_the_same_eager_steps(debug_cfg, compiler, monkeypatch):
    """A compiler error on the first step: the run goes on eagerly, drawing the same batches
    and exploration numbers as a run that never tried (the RNG is rewound)."""
    from hrm_fast.trainer.step import Trainer

    debug_cfg.train.device = "cpu"
    debug_cfg.train.steps = int(_steps_for(device_mod.CPU_COMPILE_MIN_FLOPS, debug_cfg)) + 1
    debug_cfg.train.compile = "false"
    eager = Trainer(debug_cfg)
    for _ in range(2):
        eager.step()
    want = eager.read_metrics()

    def broken_compile(fn, **kwargs):
        def run(*args):
            torch.rand(3)  # the failure happens after the compiled code drew random numbers
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nmore")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    debug_cfg.train.compile = "auto"
    tr = Trainer(debug_cfg)
    assert tr.compiled
    for _ in range(2):
        tr.step()
    assert not tr.compiled
    assert tr.compile_reason == (
        "auto: compile failed (InvalidCxxCompiler: no working C++ compiler found); running eager"
    )
    got = tr.read_metrics()
    assert got.keys() == want.keys()
    for k in want:  # bit-identical; act_steps is NaN on both when nothing halted yet
        assert got[k] == want[k] or (got[k] != got[k] and want[k] != want[k]), k


def test_the_start_line_says_what_auto_chose(debug_cfg, tmp_path, capsys):
    from hrm_fast.trainer.loop import train

    debug_cfg.train.device = "cpu"
    assert train(debug_cfg, tmp_path / "run") == 0
    line = next(x for x in capsys.readouterr().err.splitlines() if "backend=reference" in x)
    assert "compile=off (auto: 6 steps x " in line and "< 50 TFLOP, short run)" in line
