"""``hrm-fast bench --against PATH`` end to end on CPU, against tiny official-shaped checkouts
written by the test (tests/support/fake_checkouts.py): the table and JSON of both sides, and
one line with an exit code for a bad PATH, a missing class or package, or an official side
that raises. No timing is asserted."""

import importlib.util
import json

import pytest
import torch

from hrm_fast import benchmark
from hrm_fast.device import default_dtype
from tests.support.cli import one_line, run_cli
from tests.support.fake_checkouts import HRM_MODEL, write_fake_hrm, write_fake_trm


@pytest.fixture(autouse=True)
def results_dir(tmp_path, monkeypatch):
    """Results go to a bench folder of the test's, not the repository's bench/results."""
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "conftest.py").write_text("")
    monkeypatch.setattr(benchmark, "BENCH_DIR", bench)
    return bench / "results"


def _bench(capsys, checkout, preset, out, *extra):
    argv = ["bench", "--against", str(checkout), "--preset", preset, "--device", "cpu",
            "--steps", "2", "--warmup", "1", "--json", str(out), *extra]  # fmt: skip
    code = run_cli(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(out.read_text()), captured.out


@pytest.mark.parametrize(
    "write, preset", [(write_fake_hrm, "smoke"), (write_fake_trm, "trm-smoke")], ids=["hrm", "trm"]
)
def test_against_fake_checkout(tmp_path, capsys, results_dir, write, preset):
    checkout = write(tmp_path / "official")
    r, printed = _bench(capsys, checkout, preset, tmp_path / "against.json")
    ours, theirs = r["hrm_fast"], r["official_side"]
    for side in (ours, theirs):
        assert len(side["step_s"]) == 2 and all(t > 0 for t in side["step_s"])
        median = side["median_step_s"]
        assert median > 0 and side["it_s"] == pytest.approx(1 / median)
        assert side["min_step_s"] == min(side["step_s"])
        assert side["peak_mem_bytes"] > 2**20 and "ru_maxrss" in side["peak_mem_label"]
        assert side["loss_finite"]
    assert r["ratio"] == pytest.approx(theirs["median_step_s"] / ours["median_step_s"])
    # The configs echoed: both sides at the preset's model, batch 2 (the CPU default), and the
    # dtype --dtype auto resolves to here (bf16 on bf16 CPUs, else fp32) on both sides.
    assert (r["preset"], r["batch_size"], r["device"]) == (preset, 2, "cpu")
    assert ours["info"]["batch_size"] == theirs["info"]["batch_size"] == 2
    dtype = default_dtype(torch.device("cpu"))
    assert ours["info"]["dtype"] == theirs["info"]["dtype"] == str(dtype)
    assert (ours["info"]["optimizer"], ours["info"]["ce"]) == ("adamw", "stablemax")
    assert theirs["info"]["config"]["hidden_size"] == ours["info"]["model"]["hidden_size"] == 64
    assert theirs["info"]["config"]["forward_dtype"] == str(dtype)[len("torch.") :]
    # The ports are the official models: the same network, counted on both sides.
    assert ours["info"]["parameters"] == theirs["info"]["parameters"]
    assert r["environment"]["torch"] and r["environment"]["device"] == "cpu"
    if write is write_fake_hrm:
        assert theirs["info"]["attention"] == "sdpa (flash_attn stand-in)"
    else:  # trm-smoke keeps an EMA, and the TRM checkout has its EMAHelper
        assert ours["info"]["ema"] and theirs["info"]["ema"]
        assert theirs["info"]["attention"] == "its own (no flash-attn import)"
    assert "ratio official / hrm-fast" in printed and "step 2/2" in printed
    # hrm-fast's process keeps freed memory (glibc here); the official one runs malloc as it is.
    assert f"host memory: {ours['info']['host_memory']}" in r["table"]
    assert "host memory: the process's malloc as it is" in r["table"]
    assert f"{r['ratio']:.2f}x" in r["table"]
    saved = list(results_dir.glob("*-cpu-against-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["ratio"] == r["ratio"]


def test_bad_path_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert run_cli(["bench", "--against", str(missing)]) == 2
    assert str(missing) in one_line(capsys, "hrm-fast: --against")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(["bench", "--against", str(empty)]) == 2
    line = one_line(capsys)
    assert str(empty) in line and "models/hrm/hrm_act_v1.py" in line


def test_missing_class_is_one_line(tmp_path, capsys):
    renamed = HRM_MODEL.replace("class HierarchicalReasoningModel_ACTV1(", "class Renamed(")
    checkout = write_fake_hrm(tmp_path / "official", model=renamed)
    assert run_cli(["bench", "--against", str(checkout)]) == 2
    line = one_line(capsys, "hrm-fast: ")
    assert "hrm_act_v1.py" in line and "no class HierarchicalReasoningModel_ACTV1" in line


def test_missing_package_is_one_line(tmp_path, capsys, monkeypatch):
    checkout = write_fake_trm(tmp_path / "official")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "einops" else real(name, *a))  # fmt: skip
    assert run_cli(["bench", "--against", str(checkout)]) == 2
    line = one_line(capsys, "hrm-fast: einops")
    assert "pip install 'hrm-fast[against]'" in line


def test_preset_of_the_other_arch_and_bad_numbers_are_one_line(tmp_path, capsys):
    checkout = write_fake_hrm(tmp_path / "official")
    assert run_cli(["bench", "--against", str(checkout), "--preset", "trm-smoke"]) == 2
    assert "--preset trm-smoke" in one_line(capsys, "hrm-fast: ")
    for flag in ("--batch-size", "--steps"):
        assert run_cli(["bench", "--against", str(checkout), flag, "0"]) == 2
        assert one_line(capsys) == f"hrm-fast: {flag} must be >= 1, got 0"


def test_against_flags_need_against(tmp_path, capsys):
    assert run_cli(["bench", "--steps", "3"]) == 2
    assert one_line(capsys) == "hrm-fast: --steps: a flag of bench --against PATH"
    checkout = write_fake_hrm(tmp_path / "official")
    assert run_cli(["bench", "--against", str(checkout), "--nproc", "2"]) == 2
    assert one_line(capsys, "hrm-fast: --nproc: a flag of the bench suite")


def test_official_side_that_raises_is_one_line(tmp_path, capsys):
    broken = HRM_MODEL + (
        "\n\ndef _boom(self, *args, **kwargs):\n"
        "    raise RuntimeError('official forward broke\\nsecond line')\n\n\n"
        "HierarchicalReasoningModel_ACTV1.forward = _boom\n"
    )
    checkout = write_fake_hrm(tmp_path / "official", model=broken)
    argv = ["bench", "--against", str(checkout), "--preset", "smoke", "--device", "cpu",
            "--steps", "1", "--warmup", "0"]  # fmt: skip
    assert run_cli(argv) == 1
    line = one_line(capsys, "hrm-fast: official side failed: ")
    assert line.endswith("RuntimeError: official forward broke second line")


def test_official_side_compiled_as_its_pretrain_does(tmp_path, capsys):
    """--official-compile true: the official loss head runs under torch.compile (pretrain.py's
    default), trains to a finite loss, and the table says so; hrm-fast's side (smoke: a short
    run) stays eager under --compile auto and says why."""
    checkout = write_fake_hrm(tmp_path / "official")
    r, printed = _bench(
        capsys, checkout, "smoke", tmp_path / "a.json", "--official-compile", "true"
    )
    assert r["official_side"]["info"]["compile"] is True and r["official_side"]["loss_finite"]
    assert r["hrm_fast"]["info"]["compile"].startswith("off (auto: ")
    assert "compile on, adamw" in printed


def test_official_compile_is_a_flag_of_against(capsys):
    assert run_cli(["bench", "--official-compile", "true"]) == 2
    assert "--official-compile: a flag of bench --against PATH" in one_line(capsys)
    assert run_cli(["bench", "--compile", "false"]) == 2
    assert "--compile: a flag of bench --against PATH" in one_line(capsys)


def test_our_compile_flag_reaches_our_side(tmp_path, capsys):
    checkout = write_fake_trm(tmp_path / "official")
    r, _ = _bench(capsys, checkout, "trm-smoke", tmp_path / "a.json", "--compile", "false")
    assert r["hrm_fast"]["info"]["compile"] == "off (--compile false)"
    assert r["official_side"]["info"]["compile"] is False
