"""The start-up self-check (hrm_fast/selfcheck.py) and ``hrm-fast check``, on the CPU.

The kernels run under Triton's interpreter (conftest.py). Each check runs a tiny preset: the
debug model on a 4x4 canvas. Planted errors go into a launcher, below the registered op and its
autograd wiring, so the check meets them where a miscompiled kernel would put them.
"""

import json

import pytest
import torch
from hrm_fast.kernels import attention as attention_kernels
from hrm_fast.kernels import rms_norm as rms_norm_kernels
from hrm_fast.kernels import swiglu as swiglu_kernels

from hrm_fast import cli, selfcheck
from hrm_fast.errors import UserError
from hrm_fast.presets import from_name
from hrm_fast.selfcheck import families
from hrm_fast.tolerances import Comparison

pytestmark = pytest.mark.interpret
CPU = torch.device("cpu")


@pytest.fixture
def tiny_cfg():
    cfg = from_name("debug")
    cfg.data.canvas = 4
    return cfg


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("HRM_FAST_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "selfcheck"


def _by_family(report):
    return {f["family"]: f for f in report["families"]}


def test_check_command_passes_end_to_end(tmp_path, tiny_cfg, monkeypatch, capsys):
    monkeypatch.setattr("hrm_fast.check.from_name", lambda name: tiny_cfg)
    out = tmp_path / "report" / "check.json"
    assert cli.main(["check", "--device", "cpu", "--preset", "debug", "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("self-check passed: attention ")
    record = json.loads(out.read_text())
    report = record["selfcheck"]
    assert report["passed"] and report["failed"] == []
    families = _by_family(report)
    for name in ("attention", "rms_norm", "swiglu", "arc_loss", "augment", "step"):
        fam = families[name]
        assert fam["status"] == "passed", fam
        assert 0 <= fam["err"] <= fam["tol"], fam
        assert fam["shape"], fam
    assert families["attention"]["shape"] == [2, 16 + 1, 3, 32]  # 4x4 canvas + 1 puzzle position
    assert families["augment"]["err"] == 0  # integer outputs: bit-identical
    assert families["cuda_graphs"]["status"] == "skipped"
    assert record["environment"]["torch"] == torch.__version__
    assert record["identity"]["kernels"] and record["shapes"]["seq_len"] == 16


def _scale_half_of_swiglu_grad(monkeypatch):
    launcher = swiglu_kernels._swiglu_bwd

    def planted(dy, gate_up, dgate_up=None, launch=None):
        d = launcher(dy, gate_up, dgate_up=dgate_up, launch=launch)
        d[..., d.shape[-1] // 2 :] *= 1.001  # d_up 0.1% too large
        return d

    monkeypatch.setattr(swiglu_kernels, "_swiglu_bwd", planted)


def test_planted_backward_error_falls_back_to_reference(tiny_cfg, monkeypatch):
    _scale_half_of_swiglu_grad(monkeypatch)
    backend, attention, note = selfcheck.choose_backend(tiny_cfg, CPU, "auto", force=True)
    assert (backend, attention) == ("reference", None)
    assert "\n" not in note
    assert note.startswith("self-check failed: swiglu at [2, 17, 512]: d_up: max err")
    assert note.endswith("training on the reference backend")
    # The same 0.1% also moves the whole step's gradients past their bound.
    assert "step at" in note


def test_attention_alone_failing_keeps_fused_with_sdpa(tiny_cfg, monkeypatch):
    launcher = attention_kernels._attention_bwd

    def planted(*args, **kwargs):
        return launcher(*args, **kwargs).mul_(1.001)

    monkeypatch.setattr(attention_kernels, "_attention_bwd", planted)
    report = selfcheck.run_checks(tiny_cfg, CPU)
    assert report["failed"] == ["attention"] and report["attention"] == "sdpa"
    assert "d_qkv" in _by_family(report)["attention"]["detail"]
    assert _by_family(report)["step"]["status"] == "passed"  # the fused step with SDPA
    monkeypatch.setattr(selfcheck.checks, "run_checks", lambda cfg, device: report)
    backend, attention, note = selfcheck.choose_backend(tiny_cfg, CPU, "auto", force=True)
    assert (backend, attention) == ("fused", "sdpa")
    assert note.startswith("self-check failed: attention at [2, 17, 3, 32]: d_qkv: max err")
    assert note.endswith("attention runs through SDPA")


def test_compile_failure_falls_back_with_one_line(tiny_cfg, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("PTXAS error: Internal Triton PTX codegen error\nptxas fatal : ...")

    monkeypatch.setattr(rms_norm_kernels, "_add_rms_norm_fwd", broken)
    backend, attention, note = selfcheck.choose_backend(tiny_cfg, CPU, "auto", force=True)
    assert (backend, attention) == ("reference", None)
    assert "\n" not in note
    assert "rms_norm at [2, 17, 32]: RuntimeError: PTXAS error: Internal Triton" in note


def _fake_report(passed: bool, failed=()):
    return {"passed": passed, "failed": list(failed), "attention": "kernel",
            "summary": "self-check passed: fake" if passed else "self-check failed: swiglu x",
            "families": []}  # fmt: skip


def test_explicit_fused_turns_failure_into_exit_2(tiny_cfg, monkeypatch):
    monkeypatch.setattr(
        selfcheck.checks, "run_checks", lambda cfg, device: _fake_report(False, ["swiglu"])
    )
    with pytest.raises(selfcheck.SelfCheckFailed) as info:
        selfcheck.choose_backend(tiny_cfg, CPU, "fused", force=True)
    assert isinstance(info.value, UserError) and info.value.exit_code == 2
    message = str(info.value)
    assert "\n" not in message and message.startswith("--backend fused: self-check failed: swiglu")
    # Attention alone failing is still a failure of what was asked for.
    monkeypatch.setattr(
        selfcheck.checks, "run_checks", lambda cfg, device: _fake_report(False, ["attention"])
    )
    with pytest.raises(selfcheck.SelfCheckFailed):
        selfcheck.choose_backend(tiny_cfg, CPU, "fused", force=True)


def test_cpu_runs_are_not_checked(tiny_cfg, monkeypatch):
    def must_not_run(cfg, device):
        raise AssertionError("checked a run that is not on the fused GPU path")

    monkeypatch.setattr(selfcheck.checks, "run_checks", must_not_run)
    assert selfcheck.choose_backend(tiny_cfg, CPU, "auto") == ("reference", None, None)
    assert selfcheck.choose_backend(tiny_cfg, CPU, "reference") == ("reference", None, None)
    assert selfcheck.choose_backend(tiny_cfg, CPU, "reference", force=True)[0] == "reference"
    assert selfcheck.choose_backend(tiny_cfg, CPU, "fused") == ("fused", None, None)


def test_a_pass_is_cached_and_a_failure_is_not(tiny_cfg, monkeypatch, cache_in_tmp):
    calls = []

    def fake(cfg, device):
        calls.append(1)
        return _fake_report(len(calls) > 1)

    monkeypatch.setattr(selfcheck.checks, "run_checks", fake)
    assert selfcheck.checked(tiny_cfg, CPU)["passed"] is False  # a failure: checked again
    first = selfcheck.checked(tiny_cfg, CPU)
    assert first["passed"] and not first["cached"] and len(calls) == 2
    again = selfcheck.checked(tiny_cfg, CPU)
    assert again["passed"] and again["cached"] and len(calls) == 2
    assert len(list(cache_in_tmp.glob("*.json"))) == 1
    tiny_cfg.model.hidden_size = 64  # other shapes: another entry
    assert not selfcheck.checked(tiny_cfg, CPU)["cached"] and len(calls) == 3
    # A damaged entry is checked again, not trusted.
    for path in cache_in_tmp.glob("*.json"):
        path.write_text("{not json")
    assert not selfcheck.checked(tiny_cfg, CPU)["cached"]


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("HRM_FAST_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert selfcheck.cache_dir() == tmp_path / ".cache" / "hrm-fast" / "selfcheck"
    monkeypatch.setenv("HRM_FAST_CACHE_DIR", str(tmp_path / "x"))
    assert selfcheck.cache_dir() == tmp_path / "x" / "selfcheck"


def test_cache_key_changes_with_every_part(tiny_cfg):
    base = {"device": selfcheck.device_identity(CPU), "shapes": selfcheck.preset_shapes(tiny_cfg)}
    key = selfcheck.cache_key(base)
    assert key == selfcheck.cache_key(json.loads(json.dumps(base)))  # stable
    changed = {
        "gpu": "NVIDIA H100 80GB HBM3",
        "capability": "sm_90",
        "driver": "560.35.03",
        "torch": "2.14.0",
        "triton": "3.10.0",
        "hrm_fast": "0.2.0",
        "kernels": "0123456789abcdef",
        "device": "cuda",
    }
    assert set(changed) <= set(base["device"])
    for field, value in changed.items():
        parts = json.loads(json.dumps(base))
        parts["device"][field] = value
        assert selfcheck.cache_key(parts) != key, field
    for change in (
        lambda c: setattr(c.model, "hidden_size", 64),
        lambda c: setattr(c.model, "num_heads", 2),
        lambda c: setattr(c.model, "arch", "trm"),
        lambda c: setattr(c.loss, "ce", "stablemax"),
        lambda c: setattr(c.data, "canvas", 5),
        lambda c: setattr(c.train, "cuda_graphs", True),
        lambda c: setattr(c.train, "optimizer", "adam_atan2"),
    ):
        cfg = from_name("debug")
        cfg.data.canvas = 4
        change(cfg)
        parts = {"device": base["device"], "shapes": selfcheck.preset_shapes(cfg)}
        assert selfcheck.cache_key(parts) != key


def test_kernel_sources_are_part_of_the_identity(monkeypatch, tmp_path):
    import hrm_fast.kernels as kernels

    before = selfcheck.cache.kernel_sources_digest()
    fake = tmp_path / "kernels"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "swiglu.py").write_text("# edited\n")
    monkeypatch.setattr(kernels, "__file__", str(fake / "__init__.py"))
    assert selfcheck.cache.kernel_sources_digest() != before


def test_check_command_bad_input_is_one_line(tmp_path, capsys):
    assert cli.main(["check", "--device", "cpu", "--json", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--json" in err and "directory" in err
    if not torch.cuda.is_available():
        assert cli.main(["check", "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--device cuda" in err


def test_attention_switch_of_the_fused_ops():
    from hrm_fast.kernels.attention import rope_attention, rope_attention_sdpa

    from hrm_fast.layers import Ops

    assert Ops("fused").attention is rope_attention
    sdpa = Ops("fused", attention="sdpa")
    assert sdpa.attention is rope_attention_sdpa and sdpa.attention_impl == "sdpa"
    assert Ops("reference", attention="sdpa").attention_impl == "reference"
    with pytest.raises(ValueError, match="attention must be"):
        Ops("fused", attention="flash")


def test_checks_leave_the_callers_random_state_alone(tiny_cfg, monkeypatch):
    monkeypatch.setattr(families, "KERNEL_CHECKS", {"augment": families.check_augment})
    fine = Comparison("loss", True, 0.0, 0.0, 1e-5)
    monkeypatch.setattr(selfcheck.step, "check_step", lambda cfg, device, gen, attention: [fine])
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    torch.set_float32_matmul_precision("high")
    try:
        report = selfcheck.run_checks(tiny_cfg, CPU)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert report["passed"], report["summary"]
    assert torch.equal(torch.random.get_rng_state(), state)
