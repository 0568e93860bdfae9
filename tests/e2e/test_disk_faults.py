"""An unwritable or full disk: one line naming the path and the OS error, never a traceback.

A path that cannot be used before work starts exits 2; a write that fails mid-run exits 4
(``EXIT_WRITE_FAILED``), says which checkpoint was saved last, and leaves every earlier file
intact and no temporary file behind. Faults are injected by patching ``torch.save``,
``os.fsync``, ``os.replace`` and ``os.write``; the last tests use a real, small tmpfs.
"""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hrm_fast import checkpoint as ckpt
from hrm_fast.cli import main as cli_main
from hrm_fast.errors import EXIT_WRITE_FAILED


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert lines and "Traceback" not in err, err
    assert lines[-1].startswith("hrm-fast: ")
    return lines[-1]


def _train_argv(run, tasks, *extra):
    return ["train", "--preset", "debug", "--out", str(run), "--source", str(tasks),
            "--canvas", "8", "--quiet", *extra]  # fmt: skip


def _stray(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*.tmp")]


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One debug run (1 step) shared by the eval, probe and convert tests."""
    from tests.support.tasks import write_tiny_tasks

    root = tmp_path_factory.mktemp("trained")
    tasks = write_tiny_tasks(root / "tasks")
    run = root / "run"
    assert cli_main(_train_argv(run, tasks, "--steps", "1")) == 0
    return run


# --------------------------------------------------------------------------- bad --out: exit 2


@pytest.mark.parametrize("where", ["proc", "file", "under-a-file"])
def test_train_unusable_out_exit_2(where, tmp_path, tiny_tasks, capsys):
    (tmp_path / "afile").write_text("x")
    out = {"proc": "/proc/hrm-fast-x", "file": tmp_path / "afile",
           "under-a-file": tmp_path / "afile" / "run"}[where]  # fmt: skip
    assert cli_main(_train_argv(out, tiny_tasks, "--steps", "1")) == 2
    line = _one_line(capsys)
    assert f"--out {out}" in line and "cannot write there" in line
    assert (tmp_path / "afile").read_text() == "x"


# --------------------------------------------------------------------------- checkpoint saves


def _fail_second_checkpoint(monkeypatch, stage: str, code: int) -> None:
    """Make the save of step 2 fail at ``stage``; step 1's save goes through."""
    target = "step_000000002.pt"
    if stage == "torch.save":
        real = torch.save

        def save(obj, f, *a, **k):
            if isinstance(obj, dict) and obj.get("step") == 2:
                real({"partial": True}, f)  # some bytes reach the disk first
                raise OSError(code, os.strerror(code))
            return real(obj, f, *a, **k)

        monkeypatch.setattr(torch, "save", save)
    elif stage == "fsync":
        real = os.fsync

        def fsync(fd):
            if target in _fd_path(fd):
                raise OSError(code, os.strerror(code))
            return real(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    else:
        real = os.replace

        def replace(src, dst, *a, **k):
            if str(dst).endswith(target):
                raise OSError(code, os.strerror(code), str(src))
            return real(src, dst, *a, **k)

        monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize(
    "stage, code",
    [("torch.save", errno.ENOSPC), ("fsync", errno.EIO), ("rename", errno.ENOSPC)],
)
def test_failed_checkpoint_save_stops_the_run(stage, code, tmp_path, tiny_tasks, capsys,
                                              monkeypatch):  # fmt: skip
    run = tmp_path / "run"
    _fail_second_checkpoint(monkeypatch, stage, code)
    argv = _train_argv(run, tiny_tasks, "--steps", "4", "--checkpoint-every", "1")
    assert cli_main(argv) == EXIT_WRITE_FAILED
    line = _one_line(capsys)
    assert str(ckpt.checkpoint_path(run, 2)) in line
    assert os.strerror(code) in line and errno.errorcode[code] in line
    assert "training stopped at step 2" in line and "last checkpoint saved is step 1" in line
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_000000001.pt"]
    assert ckpt.load(run)["step"] == 1  # intact
    assert _stray(run) == []
    steps = [json.loads(x).get("step") for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 2  # stopped: no step 3


def test_failed_metrics_append_keeps_whole_lines(tmp_path, tiny_tasks, capsys, monkeypatch):
    run = tmp_path / "run"
    real = os.write
    calls = {"n": 0}

    def write(fd, data):
        if _fd_path(fd).endswith("metrics.jsonl"):
            calls["n"] += 1
            if calls["n"] == 4:  # half a line lands, then the disk is full
                return real(fd, bytes(data)[:10])
            if calls["n"] == 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    argv = _train_argv(run, tiny_tasks, "--steps", "4", "--checkpoint-every", "1")
    assert cli_main(argv) == EXIT_WRITE_FAILED
    line = _one_line(capsys)
    assert str(run / "metrics.jsonl") in line and "ENOSPC" in line
    assert "last checkpoint saved is step" in line
    for x in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(x)  # every line whole


def test_failed_config_json_before_any_work_exits_2(tmp_path, tiny_tasks, capsys, monkeypatch):
    real = os.fsync

    def fsync(fd):
        if "config.json" in _fd_path(fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run = tmp_path / "run"
    assert cli_main(_train_argv(run, tiny_tasks, "--steps", "1")) == 2
    line = _one_line(capsys)
    assert str(run / "config.json") in line and "EIO" in line
    assert not (run / "config.json").exists() and _stray(run) == []


# --------------------------------------------------------------------------- eval, probe, convert


def test_eval_out_is_a_file_exit_2(trained_run, tmp_path, capsys):
    (tmp_path / "f").write_text("keep")
    assert cli_main(["eval", str(trained_run), "--out", str(tmp_path / "f")]) == 2
    assert f"--out {tmp_path / 'f'}" in _one_line(capsys)
    assert (tmp_path / "f").read_text() == "keep"


@pytest.mark.parametrize("name", ["eval.json", "eval.png"])
def test_eval_write_fails(name, trained_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ev"
    real = os.fsync

    def fsync(fd):
        if f".{name}." in _fd_path(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    args = ["eval", str(trained_run), "--out", str(out), "--n-aug", "1", "--max-tasks", "1"]
    assert cli_main(args) == EXIT_WRITE_FAILED
    line = _one_line(capsys)
    assert str(out / name) in line and "No space left on device" in line
    assert not (out / name).exists() and _stray(out) == []


def test_probe_json_checked_before_the_probe_runs(trained_run, tmp_path, capsys):
    assert cli_main(["probe", str(trained_run), "--json", "/proc/nope/probe.json"]) == 2
    assert "--json /proc/nope" in _one_line(capsys)
    assert cli_main(["probe", str(trained_run), "--json", str(tmp_path)]) == 2
    assert "is a directory" in _one_line(capsys)


def test_probe_json_write_fails(trained_run, tmp_path, capsys, monkeypatch):
    real = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith("probe.json"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    assert cli_main(["probe", str(trained_run), "--json", str(tmp_path / "probe.json")]) == 4
    line = _one_line(capsys)
    assert str(tmp_path / "probe.json") in line and "EIO" in line
    assert list(tmp_path.iterdir()) == []


def test_convert_write_fails(trained_run, tmp_path, capsys, monkeypatch):
    from hrm_fast.convert import to_official_state_dict

    model, _, _ = ckpt.model_from_checkpoint(trained_run)
    src = tmp_path / "official.pt"
    torch.save(to_official_state_dict(model), src)
    real = torch.save

    def save(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "conv"
    assert cli_main(["convert", str(src), "--out", str(out), "--num-heads", "1"]) == 4
    line = _one_line(capsys)
    assert str(ckpt.checkpoint_path(out, 0)) in line and "ENOSPC" in line
    assert ckpt.list_checkpoints(out) == [] and _stray(out) == []
    monkeypatch.setattr(torch, "save", real)


# --------------------------------------------------------------------------- a real tmpfs


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs; yields a function mount(size, readonly) -> Path. Always unmounted."""
    mounted = []

    def mount(size: str, readonly: bool = False) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        opts = f"size={size}" + (",ro" if readonly else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)],
                           capture_output=True, text=True)  # fmt: skip
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in mounted:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_full_tmpfs_mid_run(tmpfs, tiny_tasks):
    """A real full disk (subprocess, real stderr): the first checkpoint fits, the second not.

    torch's zip writer turns the ENOSPC into a bare RuntimeError; the message must still say
    ENOSPC."""
    disk = tmpfs("1200k")
    run = disk / "run"
    r = subprocess.run(
        [sys.executable, "-m", "hrm_fast.cli",
         *_train_argv(run, tiny_tasks, "--steps", "2", "--checkpoint-every", "1")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == EXIT_WRITE_FAILED, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "No space left on device (ENOSPC)" in lines[0]
    assert "last checkpoint saved is step 1" in lines[0]
    assert ckpt.load(run)["step"] == 1 and _stray(run) == []


def test_read_only_tmpfs_out(tmpfs, tiny_tasks, capsys):
    disk = tmpfs("64k", readonly=True)
    assert cli_main(_train_argv(disk / "run", tiny_tasks, "--steps", "1")) == 2
    line = _one_line(capsys)
    assert str(disk / "run") in line and "EROFS" in line
