"""Bad input to every command and flag: one line naming the file or flag, exit 2, no traceback,
nothing written over. Most cases run in-process (``cli.main``); a few as real subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hrm_fast import checkpoint as ckpt
from hrm_fast.arc_files import MAX_TASK_BYTES
from hrm_fast.cli import build_parser
from hrm_fast.cli import main as cli_main
from tests.support.cli import one_line, run_cli


def _train(tmp_path, tasks, *extra):
    return ["train", "--preset", "debug", "--out", str(tmp_path / "run"), "--source", str(tasks),
            "--canvas", "8", "--quiet", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A debug run with one checkpoint (step 1), shared read-only by the resume/eval cases."""
    from tests.support.tasks import write_tiny_tasks

    root = tmp_path_factory.mktemp("bad-input-run")
    tasks = write_tiny_tasks(root / "tasks")
    assert cli_main(_train(root, tasks, "--steps", "1")) == 0
    return root / "run", tasks


# --------------------------------------------------------------------------- train flags

FLAG_CASES = [
    (["--steps", "0"], "--steps"),
    (["--steps", "-5"], "--steps"),
    (["--steps", "1e400"], "--steps"),
    (["--steps", "1e12"], "--steps"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--puzzle-emb-lr", "-1"], "--puzzle-emb-lr"),
    (["--weight-decay", "-0.1"], "--weight-decay"),
    (["--beta1", "1.5"], "--beta1"),
    (["--beta2", "-0.1"], "--beta2"),
    (["--grad-clip", "-1"], "--grad-clip"),
    (["--warmup-steps", "-1"], "--warmup-steps"),
    (["--lr-min-ratio", "2"], "--lr-min-ratio"),
    (["--batch-size", "0"], "--batch-size"),
    (["--num-heads", "0"], "--num-heads"),
    (["--hidden-size", "0"], "--hidden-size"),
    (["--H-layers", "0"], "--H-layers"),
    (["--expansion", "0"], "--expansion"),
    (["--puzzle-emb-ndim", "-1"], "--puzzle-emb-ndim"),
    (["--vocab-size", "5"], "--vocab-size"),
    (["--rope-theta", "0"], "--rope-theta"),
    (["--rms-norm-eps", "0"], "--rms-norm-eps"),
    (["--halt-exploration-prob", "1.5"], "--halt-exploration-prob"),
    (["--w-div", "-1"], "--w-div"),
    (["--min-steps", "-1"], "--min-steps"),
    (["--max-tasks", "-1"], "--max-tasks"),
    (["--seed", "-1"], "--seed"),
    (["--canvas", "0"], "--canvas"),
    (["--canvas", "31"], "--canvas"),
    (["--probe-min-differ", "-0.5"], "--probe-min-differ"),
    (["--probe-min-tv", "-1"], "--probe-min-tv"),
    (["--compile", "maybe"], "--compile"),
    (["--dtype", "fp8"], "--dtype"),
    (["--backend", "cuda"], "--backend"),
    (["--device", "tpu"], "--device"),
    (["--ce", "hinge"], "--ce"),
    (["--preset", "nope"], "--preset"),
    (["--no-such-flag", "1"], "--no-such-flag"),
    (["--device", "cpu", "--cuda-graphs", "true"], "--cuda-graphs"),
    (["--puzzle-id-per", "x"], "--puzzle-id-per"),
    (["--eval-source", "/nope"], "/nope"),
]


@pytest.mark.parametrize("extra, needle", FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_train_bad_flag(extra, needle, tmp_path, tiny_tasks, capsys):
    code = run_cli(_train(tmp_path, tiny_tasks, *extra))
    assert code == 2
    assert needle in one_line(capsys, "hrm-fast")
    assert not ckpt.list_checkpoints(tmp_path / "run")


# --------------------------------------------------------------------------- task files


def _task(train_in, train_out=((1,),), test=None) -> dict:
    pair = {"input": [list(r) for r in train_in], "output": [list(r) for r in train_out]}
    return {"train": [pair], "test": test if test is not None else [pair]}


TASK_CASES = {
    "empty-file": (b"", "malformed JSON"),
    "not-json": (b"{train: oops", "malformed JSON"),
    "not-utf8": (b'{"train": "\xff\xfe"}', "not UTF-8"),
    "deep-nesting": (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    "top-level-list": (b"[]", "expected an object"),
    "0x0-grid": (json.dumps(_task([])).encode(), "is empty"),
    "empty-row": (json.dumps(_task([[]])).encode(), "is empty"),
    "ragged": (json.dumps(_task([[1, 2], [3]])).encode(), "row 1 has 1 cells"),
    "colour-10": (json.dumps(_task([[1, 10]])).encode(), "not a colour 0-9"),
    "colour-negative": (json.dumps(_task([[-1]])).encode(), "not a colour 0-9"),
    "colour-string": (json.dumps(_task([["3"]])).encode(), "not a colour 0-9"),
    "colour-bool": (json.dumps(_task([[True]])).encode(), "not a colour 0-9"),
    "31x31": (json.dumps(_task([[0] * 31] * 31)).encode(), "larger than the 30x30 canvas"),
    "no-test": (json.dumps({"train": _task([[1]])["train"]}).encode(), "missing 'test'"),
}


@pytest.mark.parametrize("kind", sorted(TASK_CASES))
def test_bad_task_file(kind, tmp_path, capsys):
    content, needle = TASK_CASES[kind]
    d = tmp_path / "tasks"
    d.mkdir()
    (d / "bad.json").write_bytes(content)
    argv = ["train", "--preset", "debug", "--out", str(tmp_path / "run"), "--source", str(d),
            "--canvas", "30", "--quiet"]  # fmt: skip
    assert cli_main(argv) == 2
    line = one_line(capsys, "hrm-fast")
    assert str(d / "bad.json") in line and needle in line, line


def test_huge_task_file_refused_before_parsing(tmp_path, capsys, monkeypatch):
    d = tmp_path / "tasks"
    d.mkdir()
    with open(d / "huge.json", "wb") as f:  # 50 MB, sparse: never read
        f.truncate(50 * 2**20)
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("parsed a 50 MB file"))
    assert cli_main(_train(tmp_path, d)) == 2
    line = one_line(capsys, "hrm-fast")
    assert str(d / "huge.json") in line and f"{MAX_TASK_BYTES // 2**20} MiB" in line


@pytest.mark.parametrize("kind", ["empty-dir", "dir-named-json", "missing", "device"])
def test_bad_source_path(kind, tmp_path, capsys):
    src = Path("/dev/null") if kind == "device" else tmp_path / "src"
    if kind == "empty-dir":
        src.mkdir()
    elif kind == "dir-named-json":
        (src / "x.json").mkdir(parents=True)
    assert cli_main(_train(tmp_path, src)) == 2
    assert str(src) in one_line(capsys, "hrm-fast")


# --------------------------------------------------------------------------- resume


def test_resume_from_a_different_preset_names_the_field(run_dir, tmp_path, capsys):
    run, tasks = run_dir
    before = {p.name: p.read_bytes() for p in [*ckpt.list_checkpoints(run), run / "config.json",
                                                run / "metrics.jsonl"]}  # fmt: skip
    argv = ["train", "--preset", "smoke", "--out", str(run), "--resume", "--source", str(tasks),
            "--canvas", "8", "--quiet"]  # fmt: skip
    assert cli_main(argv) == 2
    line = one_line(capsys, "hrm-fast")
    assert "--preset smoke" in line and "model.hidden_size = 32" in line
    assert {p.name: p.read_bytes() for p in [*ckpt.list_checkpoints(run), run / "config.json",
                                             run / "metrics.jsonl"]} == before  # fmt: skip


@pytest.mark.parametrize(
    "extra, needle",
    [(["--hidden-size", "64"], "model.hidden_size = 32"), (["--batch-size", "2"], "batch_size"),
     (["--n-aug", "2"], "data.n_aug"), (["--seed", "7"], "train.seed")],
)  # fmt: skip
def test_resume_flag_disagrees_with_checkpoint(run_dir, extra, needle, capsys):
    run, tasks = run_dir
    argv = ["train", "--out", str(run), "--resume", "--quiet", *extra]
    assert cli_main(argv) == 2
    line = one_line(capsys, "hrm-fast")
    assert extra[0] in line and needle in line and str(run) in line


def test_resume_without_checkpoints(tmp_path, tiny_tasks, capsys):
    assert cli_main(_train(tmp_path, tiny_tasks, "--resume")) == 2
    assert "no such run directory" in one_line(capsys, "hrm-fast")
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()
    assert cli_main(_train(tmp_path, tiny_tasks, "--resume")) == 2
    assert "no checkpoints" in one_line(capsys, "hrm-fast")


@pytest.mark.parametrize("content", ["[]", "{not json", '{"model": 3}', "dir"])
def test_resume_with_broken_config_json(content, run_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(run_dir[0], run)
    cfg = run / "config.json"
    cfg.unlink()
    cfg.mkdir() if content == "dir" else cfg.write_text(content)
    assert cli_main(["train", "--out", str(run), "--resume", "--quiet"]) == 2
    assert str(cfg) in one_line(capsys, "hrm-fast")


# --------------------------------------------------------------------------- eval, probe, ...


@pytest.mark.parametrize(
    "args, needle",
    [
        (["eval", "{run}", "--n-aug", "0"], "--n-aug"),
        (["eval", "{run}", "--batch-size", "-1"], "--batch-size"),
        (["eval", "{run}", "--max-tasks", "-1"], "--max-tasks"),
        (["eval", "{run}", "--render", "-1"], "--render"),
        (["eval", "{run}", "--eval-source", "{tmp}/nope"], "--eval-source"),
        (["eval", "{tmp}/missing.pt"], "missing.pt"),
        (["probe", "{run}", "--pairs", "0"], "--pairs"),
        (["probe", "{run}", "--pairs", "-3"], "--pairs"),
        (["probe", "{run}", "--min-differ", "nan"], "--min-differ"),
        (["probe", "{run}", "--min-tv", "-2"], "--min-tv"),
        (["probe", "{run}", "--seed", "-1"], "--seed"),
        (["convert", "{tmp}/missing.pt", "--out", "{tmp}/c"], "missing.pt"),
        (["params", "--puzzle-ids", "-1"], "--puzzle-ids"),
        (["params", "--hidden-size", "0"], "--hidden-size"),
        (["bench", "--json", "{tmp}"], "--json"),
    ],
)
def test_other_commands_bad_input(args, needle, run_dir, tmp_path, capsys):
    argv = [a.replace("{run}", str(run_dir[0])).replace("{tmp}", str(tmp_path)) for a in args]
    assert run_cli(argv) == 2
    assert needle in one_line(capsys, "hrm-fast")


def test_convert_refuses_to_write_over_a_run(run_dir, tmp_path, capsys):
    from hrm_fast.convert import to_official_state_dict

    run, _ = run_dir
    model, _, _ = ckpt.model_from_checkpoint(run)
    src = tmp_path / "official.pt"
    import torch

    torch.save(to_official_state_dict(model), src)
    before = {p.name: p.read_bytes() for p in ckpt.list_checkpoints(run)}
    assert cli_main(["convert", str(src), "--out", str(run), "--num-heads", "1"]) == 2
    assert "already holds checkpoints" in one_line(capsys, "hrm-fast")
    assert {p.name: p.read_bytes() for p in ckpt.list_checkpoints(run)} == before
    assert cli_main(["convert", str(src), "--out", str(tmp_path / "c"), "--H-cycles", "0"]) == 2
    assert "--H-cycles" in one_line(capsys, "hrm-fast")


def test_resume_a_converted_checkpoint(run_dir, tmp_path, capsys):
    """README: a converted checkpoint can be fine-tuned with train --resume. It holds weights
    only (no optimiser, carry or RNG): those start fresh; its model config must match."""
    import torch

    from hrm_fast.convert import to_official_state_dict

    run, tasks = run_dir
    model, _, _ = ckpt.model_from_checkpoint(run)
    src = tmp_path / "official.pt"
    torch.save(to_official_state_dict(model), src)
    conv = tmp_path / "conv"
    assert cli_main(["convert", str(src), "--out", str(conv), "--num-heads", "1"]) == 0
    capsys.readouterr()
    argv = _train(tmp_path, tasks, "--resume", "--steps", "1")
    argv[argv.index("--out") + 1] = str(conv)
    assert cli_main(argv) == 2  # converted with 16 ACT steps, the debug preset has 3
    line = one_line(capsys, "hrm-fast")
    assert "--halt-max-steps 3" in line and "model.halt_max_steps = 16" in line
    assert cli_main([*argv, "--halt-max-steps", "16"]) == 0
    assert [p.name for p in ckpt.list_checkpoints(conv)][-1] == "step_000000001.pt"


def test_eval_and_probe_default_to_auto_device():
    p = build_parser()
    assert p.parse_args(["eval", "x"]).device == "auto"
    assert p.parse_args(["probe", "x"]).device == "auto"


# --------------------------------------------------------------------------- real processes


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--preset", "debug", "--out", "{tmp}/r", "--steps", "1e400"], "--steps"),
        (["train", "--preset", "smoke", "--out", "/proc/x", "--steps", "1"], "/proc/x"),
        (["probe", "{tmp}"], "no checkpoints"),
        (["eval", "{tmp}/empty.pt"], "empty.pt"),
    ],
)
def test_subprocess_one_line(args, needle, tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = subprocess.run([sys.executable, "-m", "hrm_fast.cli", *argv], capture_output=True,
                       text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("hrm-fast") and needle in lines[0]
    assert not Path("/proc/x").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--arch", "sm_99"], "--arch"),
        (["--bogus"], "--bogus"),
        (["--workers", "0"], "--workers"),
        (["--json", "/proc/no-such-dir/report.json"], "--json /proc/no-such-dir"),
        (["--json", "."], "is a directory"),
    ],
)
def test_kernels_report_bad_input_before_compiling(args, needle, capsys):
    # Refused before any compile (which takes minutes): one line, exit 2.
    assert run_cli(["kernels-report", *args]) == 2
    assert needle in one_line(capsys, "hrm-fast")
