"""One writer per run directory: a live writer's lock refuses a second train in one line (exit 2,
nothing written), a killed writer's stale lock is taken over, and the lock goes on every exit."""

import os
import signal
import subprocess
import sys
import time

import pytest

from hrm_fast import checkpoint as ckpt
from hrm_fast.cli import main as cli_main
from hrm_fast.run_lock import LOCK_NAME, run_lock
from tests.support.cli import one_line


def _argv(run, tasks, *extra):
    return ["train", "--preset", "debug", "--out", str(run), "--source", str(tasks), "--canvas",
            "8", "--quiet", "--steps", "1", *extra]  # fmt: skip


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_live_writer_refuses_a_second(tmp_path, tiny_tasks, capsys):
    run = tmp_path / "run"
    with run_lock(run.mkdir() or run) as lock:
        before = lock.read_bytes()
        assert cli_main(_argv(run, tiny_tasks)) == 2
        line = one_line(capsys)
        assert str(run) in line and f"pid {os.getpid()}" in line
        assert lock.read_bytes() == before  # the holder keeps its lock
    assert not ckpt.list_checkpoints(run) and not (run / "config.json").exists()
    assert not (run / LOCK_NAME).exists()


@pytest.mark.parametrize("content", ["dead-pid", "empty", "garbage"])
def test_a_stale_lock_is_taken_over_and_released(content, tmp_path, tiny_tasks, capsys):
    import socket

    run = tmp_path / "run"
    run.mkdir()
    text = {"dead-pid": f"{_dead_pid()} {socket.gethostname()}\n",
            "empty": "", "garbage": "{oops"}[content]  # fmt: skip
    (run / LOCK_NAME).write_text(text)
    assert cli_main(_argv(run, tiny_tasks)) == 0
    assert ckpt.list_checkpoints(run) and not (run / LOCK_NAME).exists()


def test_the_lock_goes_when_a_run_is_refused(tmp_path, tiny_tasks, capsys):
    run = tmp_path / "run"
    assert cli_main(_argv(run, tiny_tasks)) == 0
    assert cli_main(_argv(run, tiny_tasks)) == 2  # already holds checkpoints
    capsys.readouterr()
    assert not (run / LOCK_NAME).exists()


def test_two_real_processes(tmp_path, tiny_tasks, capsys):
    run = tmp_path / "run"
    argv = _argv(run, tiny_tasks, "--steps", "100000", "--checkpoint-every", "100000")
    first = subprocess.Popen([sys.executable, "-m", "hrm_fast.cli", *argv],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / "config.json").exists() and time.monotonic() < deadline:
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.2)
        config = (run / "config.json").read_bytes()
        assert cli_main(_argv(run, tiny_tasks, "--lr", "0.5")) == 2
        assert f"pid {first.pid}" in one_line(capsys)
        assert (run / "config.json").read_bytes() == config  # the second wrote nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # Killed: its lock is stale, and the next writer takes it.
    assert (run / LOCK_NAME).exists()
    assert cli_main(_argv(run, tiny_tasks, "--resume") if ckpt.list_checkpoints(run)
                    else _argv(run, tiny_tasks)) == 0  # fmt: skip
    assert not (run / LOCK_NAME).exists()
