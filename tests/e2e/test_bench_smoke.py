"""The bench suite runs (a smoke pass: tiny shapes, timing disabled) and ``hrm-fast bench``
builds its table from pytest-benchmark JSON. No test here asserts a time."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hrm_fast import benchmark, roofline
from hrm_fast.errors import UserError
from hrm_fast.presets import from_name

REPO = Path(__file__).resolve().parents[2]


def test_bench_suite_smoke_pass():
    cmd = [sys.executable, "-m", "pytest", "bench/", "--benchmark-disable", "--quick", "-x",
           "-q", "-p", "no:cacheprovider"]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert " passed" in p.stdout and "failed" not in p.stdout.splitlines()[-1]


def _bench(name, kind, mean, device="cuda", **info):
    return {
        "name": name,
        "stats": {"mean": mean, "rounds": 5},
        "extra_info": {"kind": kind, "device": device, **info},
    }


def _fabricated(device="cuda") -> dict:
    gpu = {"name": "NVIDIA GeForce RTX 4090 Laptop GPU"} if device == "cuda" else None
    return {
        "benchmarks": [
            _bench(
                "test_train_step[fused]",
                "train",
                0.1,
                device,
                unit="it/s",
                items_per_call=1,
                preset="seed",
                batch_size=20,
                peak_mem_bytes=3 * 2**30,
                env={"gpu": gpu},
            ),  # fmt: skip
            _bench(
                "test_kernel[swiglu-ref-fwd]",
                "kernel",
                2e-4,
                device,
                unit="calls/s",
                items_per_call=1,
            ),  # fmt: skip
            _bench(
                "test_batched_augment[20-sampler_ref]",
                "data",
                1e-3,
                device,
                unit="examples/s",
                items_per_call=20,
                peak_mem_bytes=2**20,
            ),  # fmt: skip
        ]
    }


def test_table_from_json_gpu():
    rows = benchmark.rows_from_json(_fabricated("cuda"))
    train, kern, data = rows
    assert train["throughput"] == pytest.approx(10.0) and train["unit"] == "it/s"
    cfg = from_name("seed")
    want = roofline.ceiling_it_s(cfg, "rtx4090-laptop")
    assert (
        train["ceiling_it_s"] == pytest.approx(want) and train["ceiling_gpu"] == "RTX 4090 Laptop"
    )
    assert train["mfu"] == pytest.approx(roofline.mfu(10.0, cfg, "rtx4090-laptop"))
    assert kern["ceiling_it_s"] is None and kern["mfu"] is None
    assert data["throughput"] == pytest.approx(20 / 1e-3) and data["unit"] == "examples/s"
    text = benchmark.format_table(rows)
    lines = text.splitlines()
    assert "ceiling" in lines[0] and "MFU" in lines[0]
    assert "10 it/s" in text and "ceiling @ RTX 4090 Laptop" in text and "3072 MiB" in text
    assert "20,000 examples/s" in text and "%" in text


def test_table_from_json_cpu_has_no_mfu():
    rows = benchmark.rows_from_json(_fabricated("cpu"))
    assert rows[0]["mfu"] is None  # MFU only on a GPU
    assert rows[0]["ceiling_gpu"] == "RTX 4090 Laptop"  # target GPU's ceiling, labelled
    text = benchmark.format_table(rows)
    assert "(ru_maxrss)" in text and "ceiling @" in text


def test_cpu_preset_rows_say_their_memory_is_their_own():
    label = "ru_maxrss (the preset's own process, its build included)"
    row = _bench("test_cpu_preset_step[smoke]", "train", 0.5, "cpu", unit="it/s",
                 items_per_call=1, preset="smoke", batch_size=8, peak_mem_bytes=600 * 2**20,
                 peak_mem_label=label)  # fmt: skip
    text = benchmark.format_table(benchmark.rows_from_json({"benchmarks": [row]}))
    assert "600 MiB (ru_maxrss, own process)" in text and "2 it/s" in text


def test_table_survives_disabled_stats():
    data = {"benchmarks": [{"name": "x", "stats": None, "extra_info": {}}]}
    rows = benchmark.rows_from_json(data)
    assert rows[0]["throughput"] is None
    assert "x" in benchmark.format_table(rows)


def test_main_saves_results(tmp_path, monkeypatch, capsys):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "conftest.py").write_text("")
    monkeypatch.setattr(benchmark, "BENCH_DIR", bench)

    def fake_run(device, quick, json_out):
        json_out.write_text(json.dumps(_fabricated(device)))
        return 0

    monkeypatch.setattr(benchmark, "run_suite", fake_run)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # results are fabricated
    out = tmp_path / "out" / "b.json"
    args = argparse.Namespace(device="cuda", quick=True, json=str(out))
    assert benchmark.main(args) == 0
    saved = list((bench / "results").glob(f"*-cuda-{benchmark.host_id()}.json"))
    assert len(saved) == 1 and out.exists()
    data = json.loads(out.read_text())
    assert data["hrm_fast"]["table"][0]["ceiling_it_s"] > 0
    printed = capsys.readouterr().out
    assert "test_train_step[fused]" in printed and "ceiling" in printed


def test_missing_bench_dir_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "BENCH_DIR", tmp_path / "nope")
    with pytest.raises(UserError, match="bench suite not found"):
        benchmark.main(argparse.Namespace(device="cpu", quick=True, json=None))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_bench_cuda_without_gpu_is_one_line(capsys):
    from hrm_fast.cli import main as cli_main

    assert cli_main(["bench", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "hrm-fast: --device cuda: no CUDA GPU is available on this machine"
