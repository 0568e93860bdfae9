"""Sizes past what the machine holds are refused before allocating: one line naming the flag and
the estimate against what the device has."""

import pytest

from hrm_fast import memory
from hrm_fast.cli import main as cli_main
from hrm_fast.presets import from_name
from tests.support.cli import one_line


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.support.tasks import write_tiny_tasks

    root = tmp_path_factory.mktemp("mem")
    tasks = write_tiny_tasks(root / "tasks")
    argv = ["train", "--preset", "debug", "--out", str(root / "run"), "--source", str(tasks),
            "--steps", "1", "--quiet"]  # fmt: skip
    assert cli_main(argv) == 0
    return root / "run", tasks


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--hidden-size", "1000000"], "--hidden-size 1000000"),
        (["--batch-size", "100000000"], "--batch-size 100000000"),
        (["--vocab-size", "1e9"], "--vocab-size 1000000000"),
        (["--puzzle-emb-ndim", "1e9"], "--puzzle-emb-ndim"),
    ],
)
def test_train_refuses_sizes_past_the_machine(extra, needle, run, tmp_path, capsys):
    argv = ["train", "--preset", "debug", "--out", str(tmp_path / "r"), "--source", str(run[1]),
            "--steps", "1", "--quiet", *extra]  # fmt: skip
    assert cli_main(argv) == 2
    line = one_line(capsys)
    assert needle in line
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_eval_and_probe_refuse_batches_past_the_machine(run, capsys):
    assert cli_main(["eval", str(run[0]), "--batch-size", "100000000"]) == 2
    line = one_line(capsys)
    assert "--batch-size 100000000" in line and "available" in line
    assert cli_main(["probe", str(run[0]), "--pairs", "100000000"]) == 2
    line = one_line(capsys)
    assert "--pairs 100000000" in line and "available" in line


def test_estimate_passes_real_runs_and_names_the_biggest_term(monkeypatch):
    cfg = from_name("paper")  # 768 x 900 tokens at hidden 512 fits an 80 GB GPU
    monkeypatch.setattr(memory, "available_bytes", lambda device: 80 * 10**9)
    memory.check_training_fits(cfg, 400 * 1000 + 1, 768, "cpu")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10**9)
    with pytest.raises(memory.UserError, match="--batch-size 768"):
        memory.check_training_fits(cfg, 400 * 1000 + 1, 768, "cpu")
