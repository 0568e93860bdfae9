"""--device resolution (cuda, then mps, then cpu), the dtype choice and the one-line refusals
for what Apple MPS cannot run. Availability is monkeypatched: no GPU or Mac is needed."""

import math

import pytest
import torch

from hrm_fast import device as D
from hrm_fast.cli import main as cli_main
from hrm_fast.device import resolve_runtime
from hrm_fast.errors import UserError
from hrm_fast.presets import from_name


def _machine(monkeypatch, cuda: bool, mps: bool, macos14: bool = True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos14)


@pytest.mark.parametrize(
    "cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_auto_prefers_cuda_then_mps(monkeypatch, cuda, mps, expected):
    _machine(monkeypatch, cuda, mps)
    assert D.resolve_device("auto") == torch.device(expected)


def test_explicit_mps(monkeypatch):
    _machine(monkeypatch, cuda=False, mps=True)
    assert D.resolve_device("mps") == torch.device("mps")
    _machine(monkeypatch, cuda=True, mps=False)
    with pytest.raises(UserError, match=r"^--device mps: no Apple MPS device is available"):
        D.resolve_device("mps")
    with pytest.raises(UserError, match="expected auto, cpu, cuda or mps"):
        D.resolve_device("metal")


@pytest.mark.parametrize("macos14, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_mps_dtype_follows_the_os(monkeypatch, macos14, expected):
    _machine(monkeypatch, cuda=False, mps=True, macos14=macos14)
    assert D.default_dtype(torch.device("mps")) == expected
    assert D.default_dtype(torch.device("cuda")) == torch.bfloat16


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected",
    [(True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, torch.float32)],
)
def test_cpu_dtype_is_bf16_where_the_cpu_computes_it(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert D.default_dtype(torch.device("cpu")) == expected
    cfg = from_name("smoke")
    cfg.train.device = "cpu"
    assert resolve_runtime(cfg)[2] == expected


def test_cpu_dtype_without_the_probes_is_fp32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert D.default_dtype(torch.device("cpu")) == torch.float32


def _cfg(**train):
    cfg = from_name("smoke")
    cfg.train.device = "mps"
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_mps_runtime_is_reference_with_os_dtype(monkeypatch):
    _machine(monkeypatch, cuda=False, mps=True, macos14=True)
    assert resolve_runtime(_cfg()) == (torch.device("mps"), "reference", torch.bfloat16)
    _machine(monkeypatch, cuda=False, mps=True, macos14=False)
    assert resolve_runtime(_cfg()) == (torch.device("mps"), "reference", torch.float32)


@pytest.mark.parametrize(
    "train, message",
    [
        (dict(backend="fused"), "--backend fused: the Triton kernels need a CUDA or ROCm GPU"),
        (dict(cuda_graphs=True), "--cuda-graphs: CUDA graphs need a CUDA or ROCm GPU"),
        (dict(dtype="bf16"), "--dtype bf16: MPS has bfloat16 from macOS 14"),
    ],
)
def test_mps_refusals_are_one_line(monkeypatch, train, message):
    _machine(monkeypatch, cuda=False, mps=True, macos14=False)
    with pytest.raises(UserError) as exc:
        resolve_runtime(_cfg(**train))
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks the no-MPS message")
def test_train_device_mps_refuses_here(tmp_path, capsys):
    code = cli_main(["train", "--preset", "smoke", "--device", "mps", "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == "hrm-fast: --device mps: no Apple MPS device is available on this machine"


@pytest.mark.mps
def test_mps_reference_steps_train(debug_cfg):
    """On a Mac (scripts/gpu-check.sh --device mps): reference steps run on MPS, finite."""
    if not torch.backends.mps.is_available():
        pytest.skip("needs an Apple MPS device")
    from hrm_fast.trainer.step import METRIC_KEYS, Trainer

    debug_cfg.train.device = "mps"
    trainer = Trainer(debug_cfg)
    assert trainer.device.type == "mps"
    before = [p.detach().cpu().clone() for p in trainer.params]
    for _ in range(4):
        trainer.step()
        metrics = trainer.read_metrics()
        assert all(math.isfinite(metrics[k]) for k in METRIC_KEYS), metrics
    after = [p.detach().cpu() for p in trainer.params]
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


def test_data_parallel_refuses_mps(monkeypatch):
    from hrm_fast import distributed

    _machine(monkeypatch, cuda=False, mps=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match=r"^--device mps: data-parallel training"):
        distributed.setup("auto")
