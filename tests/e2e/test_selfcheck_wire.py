"""The self-check wired into training: the fallback, its records, exit 2, the cache, the ranks.

A GPU is simulated with ``force_selfcheck=True``: the fused path is checked on the CPU with the
kernels in Triton's interpreter (tiny preset: the debug model on a 4x4 canvas). Where the
check's own detection is already covered (tests/test_selfcheck.py), a canned report stands in
for it to keep these fast.
"""

import json

import pytest
from hrm_fast.kernels import rms_norm as rms_norm_kernels
from hrm_fast.kernels import swiglu as swiglu_kernels

from hrm_fast import checkpoint as ckpt
from hrm_fast import cli, dashboard, selfcheck
from hrm_fast.presets import from_name
from hrm_fast.selfcheck import runtime
from hrm_fast.trainer import step as trainer_step
from hrm_fast.trainer.loop import train
from tests.support.tasks import write_tiny_tasks

pytestmark = pytest.mark.interpret


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("HRM_FAST_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def tasks(tmp_path):
    return write_tiny_tasks(tmp_path / "tasks", max_side=3)


@pytest.fixture
def tiny_cfg(tasks):
    cfg = from_name("debug")
    cfg.data.source, cfg.data.canvas = str(tasks), 4
    t = cfg.train
    t.device, t.steps, t.log_every, t.checkpoint_every = "cpu", 2, 1, 2
    return cfg


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _selfcheck_record(run):
    found = [r for r in _records(run) if r["event"] == "selfcheck"]
    assert len(found) == 1, found
    return found[0]


def _report(failed=()):
    passed = not failed
    failures = "; ".join(f"{f} at [2, 17]: d: max err 1e-03" for f in failed)
    summary = f"self-check failed: {failures}" if failed else "self-check passed: swiglu 1.0e-07"
    return {"passed": passed, "failed": list(failed), "summary": summary, "families": [],
            "attention": "sdpa" if "attention" in failed else "kernel"}  # fmt: skip


def _canned(monkeypatch, report, calls=None):
    def fake(cfg, device):
        if calls is not None:
            calls.append(device)
        return report

    monkeypatch.setattr(selfcheck.checks, "run_checks", fake)


def test_planted_backward_error_trains_on_reference_and_says_so(tiny_cfg, tmp_path, monkeypatch,
                                                                capsys):  # fmt: skip
    launcher = swiglu_kernels._swiglu_bwd

    def planted(dy, gate_up, dgate_up=None, launch=None):
        d = launcher(dy, gate_up, dgate_up=dgate_up, launch=launch)
        d[..., d.shape[-1] // 2 :] *= 1.001  # d_up 0.1% too large
        return d

    monkeypatch.setattr(swiglu_kernels, "_swiglu_bwd", planted)
    run = tmp_path / "run"
    assert train(tiny_cfg, run, force_selfcheck=True) == 0
    rec = _selfcheck_record(run)
    assert rec["passed"] is False and rec["fallback"] == "reference"
    assert rec["backend"] == "reference" and rec["step"] == 0
    note = rec["note"]
    assert note.startswith("self-check failed: swiglu at [2, 17, 512]: d_up: max err")
    assert note.endswith("training on the reference backend") and "\n" not in note
    err = capsys.readouterr().err
    assert f"hrm-fast: {note}\n" in err  # the one line, before step 1
    assert "backend=reference" in err
    assert "| self-check failed: reference backend" in err  # every progress line says so
    for config in (json.loads((run / "config.json").read_text()), ckpt.load(run)["config"]):
        assert config["train"]["backend"] == "reference"
        assert config["train"]["selfcheck"] == note
    # The report draws the note (cut to fit) under the plot.
    notes = dashboard.load_run(run).notes
    assert notes[0].startswith("self-check failed: swiglu at [2, 17, 512]") and len(notes[0]) <= 200
    assert not any("ignored events" in n for n in notes)


def test_compile_failure_falls_back_with_one_line(tiny_cfg, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("PTXAS error: Internal Triton PTX codegen error\nptxas fatal : ...")

    monkeypatch.setattr(rms_norm_kernels, "_add_rms_norm_fwd", broken)
    run = tmp_path / "run"
    assert train(tiny_cfg, run, quiet=True, force_selfcheck=True) == 0
    rec = _selfcheck_record(run)
    assert rec["fallback"] == "reference" and "\n" not in rec["note"]
    assert "rms_norm at [2, 17, 32]: RuntimeError: PTXAS error: Internal Triton" in rec["note"]
    assert ckpt.load(run)["config"]["train"]["backend"] == "reference"


def test_attention_alone_failing_trains_fused_with_sdpa(tiny_cfg, tmp_path, monkeypatch):
    _canned(monkeypatch, _report(["attention"]))
    run = tmp_path / "run"
    assert train(tiny_cfg, run, quiet=True, force_selfcheck=True) == 0
    rec = _selfcheck_record(run)
    assert rec["fallback"] == "sdpa" and rec["backend"] == "fused" and rec["attention"] == "sdpa"
    assert rec["note"].endswith("attention runs through SDPA")
    config = ckpt.load(run)["config"]["train"]
    assert config["attention"] == "sdpa" and config["backend"] == "auto"
    assert config["selfcheck"] == rec["note"]
    # The same run built again: its blocks' attention is PyTorch's.
    trainer = trainer_step.Trainer(tiny_cfg, force_selfcheck=True)
    assert trainer.backend == "fused" and trainer.runtime.attention == "sdpa"
    impls = {m.ops.attention_impl for m in trainer.model.modules() if hasattr(m, "ops")}
    assert impls == {"sdpa"}


def test_explicit_fused_failure_is_exit_2_with_one_line(tasks, tmp_path, monkeypatch, capsys):
    _canned(monkeypatch, _report(["swiglu"]))
    real = runtime.resolve_checked_runtime
    monkeypatch.setattr(trainer_step, "resolve_checked_runtime",
                        lambda cfg, dp, force: real(cfg, dp, force=True))  # fmt: skip
    run = tmp_path / "run"
    argv = ["train", "--preset", "debug", "--out", str(run), "--source", str(tasks),
            "--canvas", "4", "--steps", "2", "--device", "cpu", "--quiet"]  # fmt: skip
    assert cli.main([*argv, "--backend", "fused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "--backend fused: self-check failed: swiglu at [2, 17]" in err
    assert not list(run.glob("checkpoints/*.pt"))
    # Without --backend fused the same failure falls back and trains.
    assert cli.main([*argv, "--out", str(tmp_path / "auto")]) == 0


def test_a_passed_check_is_cached_so_the_second_run_does_not_check(tiny_cfg, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    calls = []
    _canned(monkeypatch, _report(), calls)
    for name in ("first", "second"):
        assert train(tiny_cfg, tmp_path / name, quiet=True, force_selfcheck=True) == 0
        rec = _selfcheck_record(tmp_path / name)
        assert rec["passed"] and rec["backend"] == "fused" and rec["fallback"] is None
    assert len(calls) == 1
    first, second = (_selfcheck_record(tmp_path / n)["note"] for n in ("first", "second"))
    assert second == f"{first} (cached)"
    config = json.loads((tmp_path / "second" / "config.json").read_text())["train"]
    assert config["backend"] == "auto" and config["attention"] == "kernel"
    assert config["selfcheck"].startswith("self-check passed")


def test_runs_that_are_not_fused_on_a_gpu_are_not_checked(tiny_cfg, monkeypatch):
    calls = []
    _canned(monkeypatch, _report(["swiglu"]), calls)
    for backend in ("auto", "reference", "fused"):  # a CPU run, not forced: nothing to check
        tiny_cfg.train.backend = backend
        rt = runtime.resolve_checked_runtime(tiny_cfg)
        assert rt.note is None and rt.fallback is None and tiny_cfg.train.selfcheck == ""
    tiny_cfg.train.backend = "reference"
    assert runtime.resolve_checked_runtime(tiny_cfg, force=True).note is None
    assert calls == []


def test_selfcheck_is_a_record_not_a_flag(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--out", "x", "--selfcheck", "y"])
    assert info.value.code == 2
    assert "unrecognized arguments: --selfcheck" in capsys.readouterr().err
    assert cli.main(["train", "--out", "x", "--attention", "flash"]) == 2
    assert "--attention must be kernel or sdpa" in capsys.readouterr().err


class _Ranks:
    """Two ranks' collectives as seen by one rank: the other rank's outcome is fixed."""

    def __init__(self, rank, other_code, other_note):
        self.rank, self.world, self.is_main = rank, 2, rank == 0
        self.other, self.other_note, self.levels = other_code, other_note, iter((1, 2, 3))

    def any(self, flag):
        return flag or self.other >= next(self.levels)

    def gather_objects(self, obj):
        if not self.is_main:
            return None
        return [obj, (self.other, self.other_note)]


def test_ranks_agree_on_the_worst_outcome(tiny_cfg, monkeypatch):
    _canned(monkeypatch, _report())  # this rank passes
    cpu = "cpu"
    failed = "self-check failed: swiglu at [2, 17]: d; training on the reference backend"
    got = runtime.checked_backend(tiny_cfg, cpu, "auto", _Ranks(0, runtime.REFERENCE, failed),
                                  force=True)  # fmt: skip
    assert got == ("reference", None, f"rank 1: {failed}")
    backend, attention, note = runtime.checked_backend(
        tiny_cfg, cpu, "auto", _Ranks(1, runtime.SDPA, "x"), force=True
    )
    assert (backend, attention) == ("fused", "sdpa")
    assert note == "another rank's self-check failed; attention runs through SDPA"
    # Both passed: each keeps its own line.
    backend, attention, note = runtime.checked_backend(
        tiny_cfg, cpu, "auto", _Ranks(0, runtime.PASSED, "y"), force=True
    )
    assert (backend, attention) == ("fused", None) and note.startswith("self-check passed")
    # --backend fused and the other rank failed: this rank stops too, exit 2.
    with pytest.raises(selfcheck.SelfCheckFailed, match="^--backend fused: rank 1: self-check"):
        runtime.checked_backend(
            tiny_cfg, cpu, "fused", _Ranks(0, runtime.STOP, f"--backend fused: {failed}"),
            force=True,
        )  # fmt: skip
    with pytest.raises(selfcheck.SelfCheckFailed, match="another rank's self-check failed$"):
        runtime.checked_backend(tiny_cfg, cpu, "fused", _Ranks(1, runtime.STOP, "z"), force=True)


def test_kernel_times_against_the_roofline_floor(tiny_cfg):
    import torch

    from hrm_fast import kernel_timing
    from hrm_fast.roofline import GPUS

    tiny_cfg.train.batch_size = 2
    # On CPU tensors the ops run their eager reference: this exercises the arithmetic only.
    result = kernel_timing.measure(tiny_cfg, "cpu", "NVIDIA H100 80GB HBM3", torch.float32)
    rows = {r["family"]: r for r in result["kernels"]}
    assert set(rows) == {"attention", "rms_norm", "swiglu", "arc_loss"}
    h100 = GPUS["h100"]
    n = 2 * 17 * tiny_cfg.model.hidden_size  # [B, 16 + 1 puzzle position, hidden], fp32
    assert rows["rms_norm"]["fwd_floor_s"] == pytest.approx(3 * 4 * n / h100.peak_bytes)
    assert rows["rms_norm"]["bwd_floor_s"] == pytest.approx(5 * 4 * n / h100.peak_bytes)
    m = tiny_cfg.model
    flops = 4.0 * 2 * m.num_heads * 17 * 17 * m.head_dim
    assert rows["attention"]["fwd_floor_s"] >= flops / h100.peak_flops
    for r in rows.values():
        assert r["fwd_s"] > 0 and r["bwd_s"] >= 0
        assert r["fwd_of_roofline"] == pytest.approx(r["fwd_floor_s"] / r["fwd_s"])
    table = kernel_timing.format_times(result)
    assert table.splitlines()[0].startswith("kernel times at batch 2") and "rms_norm" in table
    unknown = kernel_timing.measure(tiny_cfg, "cpu", "Some Future GPU", torch.float32)
    assert unknown["peak"] is None and "no datasheet peak" in unknown["note"]
    assert all(r["fwd_floor_s"] is None for r in unknown["kernels"])


def test_check_on_cpu_says_timings_are_gpu_only(tmp_path, monkeypatch, capsys):
    _canned(monkeypatch, _report())
    out = tmp_path / "check.json"
    assert cli.main(["check", "--device", "cpu", "--preset", "debug", "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("kernel timings are GPU-only")
    record = json.loads(out.read_text())
    assert record["schema"] == 2 and "kernels" not in record["kernel_times"]
