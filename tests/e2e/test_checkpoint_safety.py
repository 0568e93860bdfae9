"""Loading checkpoints never runs code: crafted, damaged and foreign files get one line, exit 2.

The malicious file is a real ``torch.save`` whose pickle calls ``open(SENTINEL, "w")`` when
unpickled (a harmless stand-in for any ``__reduce__`` payload). ``test_payload_is_live`` proves
plain unpickling does create the sentinel, so the refusals below are what keep it from existing.
"""

import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from hrm_fast import checkpoint as ckpt
from hrm_fast.cli import main as cli_main
from hrm_fast.errors import UserError

REPO = Path(__file__).resolve().parents[2]


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``, which creates ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_malicious(path: Path, sentinel: Path, legacy: bool = False) -> Path:
    payload = {"version": 1, "step": 3, "config": {}, "model": {"w": _CreatesFile(sentinel)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_payload_is_live(tmp_path):
    sentinel = tmp_path / "ran"
    evil = write_malicious(tmp_path / "evil.pt", sentinel)
    with zipfile.ZipFile(evil) as z:
        raw = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    pickle.loads(raw)  # what an unrestricted load does
    assert sentinel.exists()


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("hrm-fast: ")
    return lines[0]


def _argv(cmd: str, target: Path, tmp_path: Path, tasks: Path) -> list[str]:
    if cmd == "probe":
        return ["probe", str(target)]
    if cmd == "eval":
        return ["eval", str(target), "--out", str(tmp_path / "ev")]
    if cmd == "convert":
        return ["convert", str(target), "--out", str(tmp_path / "conv")]
    return ["train", "--preset", "debug", "--out", str(target), "--resume", "--source",
            str(tasks), "--canvas", "8", "--quiet"]  # fmt: skip


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
@pytest.mark.parametrize("cmd", ["probe", "eval", "convert", "train-resume"])
def test_malicious_checkpoint_is_refused(cmd, legacy, tmp_path, tiny_tasks, capsys):
    sentinel = tmp_path / "ran"
    run = tmp_path / "run"
    evil = write_malicious(ckpt.checkpoint_path(run, 3), sentinel, legacy)
    target = run if cmd == "train-resume" else evil
    assert cli_main(_argv(cmd, target, tmp_path, tiny_tasks)) == 2
    line = _one_line(capsys)
    assert not sentinel.exists()
    assert str(evil) in line and "refused" in line and "open" in line
    assert "weights_only" not in line
    assert not (tmp_path / "conv" / "checkpoints").exists()


def test_resume_refuses_a_malicious_newest_checkpoint_even_with_a_good_older_one(tmp_path):
    """A damaged newest checkpoint falls back to the one before; one carrying code does not."""
    run = tmp_path / "run"
    good = {"version": 1, "step": 3, "config": {}, "model": {"w": torch.zeros(2)}}
    ckpt.atomic_save(good, ckpt.checkpoint_path(run, 3))
    ckpt.checkpoint_path(run, 6).write_bytes(b"cut short")
    skipped = []
    assert ckpt.load_latest(run, on_skip=skipped.append)["step"] == 3
    assert len(skipped) == 1 and "step_000000006.pt" in skipped[0]
    write_malicious(ckpt.checkpoint_path(run, 9), tmp_path / "ran")
    with pytest.raises(ckpt.RefusedFile, match="step_000000009.pt"):
        ckpt.load_latest(run)
    assert not (tmp_path / "ran").exists()


def _bad_files(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase its one-line message must contain)."""
    root.mkdir()
    good = {"version": 1, "step": 1, "config": {}, "model": {"w": torch.zeros(2)}}
    files = {}

    def add(name, writer, needle):
        p = root / f"{name}.pt"
        writer(p)
        files[name] = (p, needle)

    add("empty", lambda p: p.write_bytes(b""), "empty or truncated")
    buf = root / "full.pt"
    torch.save({**good, "model": {"w": torch.zeros(4096)}}, buf)
    add("truncated", lambda p: p.write_bytes(buf.read_bytes()[:2000]), "truncated")
    add("text", lambda p: p.write_text("hello, not a checkpoint"), "not a torch file")

    def garbage_zip(p):
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("archive/data.pkl", b"\x80\x02garbage")

    add("garbage-zip", garbage_zip, "not a torch file")
    add("tensor", lambda p: torch.save(torch.zeros(3), p), "not an hrm-fast checkpoint")
    add("newer", lambda p: torch.save({**good, "version": 99}, p), "format 99 is newer")
    add("bad-config", lambda p: torch.save({**good, "config": {"model": {"hidden_size": "x"}}}, p),
        "model.hidden_size")  # fmt: skip
    add("model-not-tensors", lambda p: torch.save({**good, "model": {"w": [1, 2]}}, p), "'model'")
    return files


@pytest.mark.parametrize(
    "kind",
    ["empty", "truncated", "text", "garbage-zip", "tensor", "newer", "bad-config",
     "model-not-tensors"],
)  # fmt: skip
@pytest.mark.parametrize("cmd", ["probe", "eval"])
def test_malformed_checkpoint_one_line(cmd, kind, tmp_path, tiny_tasks, capsys):
    path, needle = _bad_files(tmp_path / "files")[kind]
    assert cli_main(_argv(cmd, path, tmp_path, tiny_tasks)) == 2
    line = _one_line(capsys)
    assert str(path) in line and needle in line, line


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "garbage-zip", "tensor"])
def test_convert_malformed_source_one_line(kind, tmp_path, tiny_tasks, capsys):
    path, _ = _bad_files(tmp_path / "files")[kind]
    assert cli_main(_argv("convert", path, tmp_path, tiny_tasks)) == 2
    assert str(path) in _one_line(capsys)
    assert not (tmp_path / "conv" / "checkpoints").exists()


def test_directory_where_a_checkpoint_file_is_expected(tmp_path, capsys):
    d = tmp_path / "not-a-run"
    d.mkdir()
    assert cli_main(["probe", str(d)]) == 2
    assert "no checkpoints" in _one_line(capsys)
    assert cli_main(["convert", str(d), "--out", str(tmp_path / "conv")]) == 2
    assert "is a directory" in _one_line(capsys)


def test_convert_of_a_malicious_file_prints_our_line_not_pytorch_advice(tmp_path):
    """Once a subprocess: the real stderr of the installed entry point."""
    sentinel = tmp_path / "ran"
    evil = write_malicious(tmp_path / "evil.pt", sentinel)
    r = subprocess.run(
        [sys.executable, "-m", "hrm_fast.cli", "convert", str(evil), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "weights_only" not in r.stderr and not sentinel.exists()


def test_checkpoint_written_by_the_trainer_loads_weights_only(debug_cfg, tmp_path):
    """Every field of a real checkpoint (optimizer, carry, RNG, config, dataset) is plain data."""
    from hrm_fast.trainer.loop import train

    debug_cfg.train.steps = 1
    assert train(debug_cfg, tmp_path / "run", quiet=True) == 0
    path = ckpt.list_checkpoints(tmp_path / "run")[-1]
    payload = torch.load(path, weights_only=True)  # raises on anything but plain data
    assert {"model", "optimizer", "carry", "rng", "config", "dataset"} <= set(payload)
    assert payload["version"] == ckpt.VERSION


def test_no_unrestricted_load_anywhere_in_the_tree():
    needle = "weights_only" + "=False"
    hits = [
        str(p.relative_to(REPO))
        for p in REPO.rglob("*")
        if p.suffix in (".py", ".md", ".sh", ".toml")
        and not any(part.startswith(".") for part in p.relative_to(REPO).parts)
        and needle in p.read_text(errors="replace")
    ]
    assert hits == []


def test_read_weights_only_refuses_without_calling(tmp_path):
    sentinel = tmp_path / "ran"
    evil = write_malicious(tmp_path / "evil.pt", sentinel)
    with pytest.raises(UserError, match="refused"):
        ckpt.read_weights_only(evil)
    assert not sentinel.exists()
