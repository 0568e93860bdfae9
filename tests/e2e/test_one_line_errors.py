"""Cases that used to end in a traceback, a hang or silent nonsense: each is now one line with
the documented exit code, and nothing is lost."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from hrm_fast import checkpoint as ckpt
from hrm_fast.cli import main as cli_main
from hrm_fast.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED
from tests.support.cli import one_line, run_cli


def _train(out, tasks, *extra):
    return ["train", "--preset", "debug", "--out", str(out), "--source", str(tasks), "--quiet",
            "--steps", "1", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tests.support.tasks import write_tiny_tasks

    root = tmp_path_factory.mktemp("one-line")
    tasks = write_tiny_tasks(root / "tasks")
    assert cli_main(_train(root / "run", tasks)) == 0
    return root / "run", tasks


# --------------------------------------------------------------------------- signals


def test_second_ctrl_c_inside_torch_save_is_an_interrupt(tmp_path, monkeypatch):
    real = ckpt._KeepsWriteError.write
    calls = {"n": 0}

    def write(self, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, data)

    monkeypatch.setattr(ckpt._KeepsWriteError, "write", write)
    path = tmp_path / "step_000000001.pt"
    path.write_bytes(b"earlier")
    with pytest.raises(KeyboardInterrupt):  # not the zip writer's "unexpected pos"
        ckpt.atomic_save({"a": torch.zeros(1000), "b": torch.ones(1000)}, path)
    assert path.read_bytes() == b"earlier" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_sigterm_outside_training_ends_like_ctrl_c(monkeypatch, capsys):
    import hrm_fast.evaluate as evaluate

    def evaluation(args):
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not stop the command")

    monkeypatch.setattr(evaluate, "main", evaluation)
    before = signal.getsignal(signal.SIGTERM)
    assert cli_main(["eval", "x"]) == EXIT_INTERRUPTED
    assert one_line(capsys) == "hrm-fast: interrupted"
    assert signal.getsignal(signal.SIGTERM) == before  # restored for the caller


def test_a_closed_stdout_is_not_a_traceback():
    p = subprocess.Popen([sys.executable, "-m", "hrm_fast.cli", "params", "--preset", "smoke"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    p.stdout.close()  # `| head -0`: the reader is gone before the first line
    err = p.stderr.read().decode()
    assert p.wait() == EXIT_BROKEN_PIPE and err == "", err


# --------------------------------------------------------------------------- data


def test_a_fifo_among_task_files_is_refused_not_read(tmp_path, tiny_tasks, capsys):
    os.mkfifo(tiny_tasks / "stuck.json")  # reading it would block forever
    assert cli_main(_train(tmp_path / "run", tiny_tasks)) == 2
    line = one_line(capsys)
    assert "stuck.json" in line and "not a regular file" in line


def test_duplicate_json_keys_are_refused(tmp_path, tiny_tasks, capsys):
    task = (tiny_tasks / "task00.json").read_text()
    body = json.loads(task)
    dup = '{"train": ' + json.dumps(body["train"]) + ', "train": [], "test": '
    (tiny_tasks / "task00.json").write_text(dup + json.dumps(body["test"]) + "}")
    assert cli_main(_train(tmp_path / "run", tiny_tasks)) == 2
    line = one_line(capsys)
    assert "task00.json" in line and "duplicate key 'train'" in line


def test_plain_task_files_beside_challenges_are_not_ignored(tmp_path, tiny_tasks, capsys):
    challenges = {"c1": json.loads((tiny_tasks / "task01.json").read_text())}
    (tiny_tasks / "x_challenges.json").write_text(json.dumps(challenges))
    assert cli_main(_train(tmp_path / "run", tiny_tasks)) == 2
    line = one_line(capsys)
    assert "plain task files" in line and "task00.json" in line


# --------------------------------------------------------------------------- checkpoints


def test_eval_refuses_nan_weights(run_dir, tmp_path, capsys):
    run = tmp_path / "nan"
    shutil.copytree(run_dir[0], run)
    path = ckpt.list_checkpoints(run)[-1]
    payload = torch.load(path, weights_only=True)
    key = next(k for k, v in payload["model"].items() if v.is_floating_point())
    payload["model"][key] = torch.full_like(payload["model"][key], float("nan"))
    torch.save(payload, path)
    assert cli_main(["eval", str(run)]) == 2
    line = one_line(capsys)
    assert "NaN" in line and key in line
    assert not (run / "eval.json").exists()


def test_probe_on_a_changed_task_list(run_dir, tmp_path, capsys):
    run, tasks = run_dir
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    extra = tasks / "task99.json"
    shutil.copy(tasks / "task00.json", extra)
    try:
        assert cli_main(["probe", str(moved)]) == 2
        assert "do not match" in one_line(capsys)
    finally:
        extra.unlink()


# --------------------------------------------------------------------------- ablate, compile


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--out", "/proc/nope"], "--out /proc/nope"),
        (["--first-seed", "-1"], "--first-seed"),
        (["--variants", ","], "--variants"),
    ],
)
def test_ablate_bad_input_before_training(extra, needle, tmp_path, capsys, monkeypatch):
    import hrm_fast.ablate as ablate

    monkeypatch.setattr(ablate, "run_one", lambda *a, **k: pytest.fail("trained first"))
    argv = ["ablate", "--preset", "debug", "--out", str(tmp_path / "a"), "--steps", "2",
            "--seeds", "1", "--quiet", *extra]  # fmt: skip
    assert run_cli(argv) == 2
    assert needle in one_line(capsys)


def test_unwritable_compile_cache_is_one_line(tmp_path, tiny_tasks, capsys, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/proc/no-cache")
    assert cli_main(_train(tmp_path / "run", tiny_tasks, "--compile", "true")) == 2
    assert "TORCHINDUCTOR_CACHE_DIR" in one_line(capsys)
    assert not ckpt.list_checkpoints(tmp_path / "run")
