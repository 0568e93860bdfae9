"""Tasks whose test outputs are unknown load for ``predict`` and are refused, in one line,
where they would have to be scored or trained on; ARC Prize challenges/solutions files keep
their own outputs (a conflict is refused) and bad files give one line."""

import json

import pytest

from hrm_fast.arc_files import load_challenges_file, load_tasks
from hrm_fast.cli import main
from hrm_fast.config import DataConfig
from hrm_fast.data import ArcDataset, DataError, GridBank
from tests.support.cli import one_line

TRAIN = [{"input": [[1, 2]], "output": [[2, 1]]}, {"input": [[3]], "output": [[3]]}]


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_task_file_without_test_outputs(tmp_path):
    d = tmp_path / "tasks"
    d.mkdir()
    _write(d / "a.json", {"train": TRAIN, "test": [{"input": [[4, 5]]}, {"input": [[6]]}]})
    _write(d / "b.json", {"train": TRAIN, "test": [{"input": [[1]], "output": [[1]]}]})
    (a, b) = load_tasks(d, need_outputs=False)
    assert [out for _, out in a.test_pairs] == [None, None] and not a.has_test_outputs
    assert b.has_test_outputs
    with pytest.raises(DataError, match=r"test\[0\] missing 'output'"):
        load_tasks(d)
    # an unknown output is stored as 0x0 in the grid bank
    bank = GridBank.from_pairs(a.test_pairs, 8)
    assert bank.shapes[0].tolist() == [1, 2, 0, 0] and bank.pair(1)[1].shape == (0, 0)


def test_challenges_without_solutions(tmp_path):
    chal = _write(
        tmp_path / "x_challenges.json",
        {"t1": {"train": TRAIN, "test": [{"input": [[7]]}]},
         "t0": {"train": TRAIN, "test": [{"input": [[8]]}, {"input": [[9, 9]]}]}},
    )  # fmt: skip
    tasks = load_challenges_file(chal, need_outputs=False)
    assert [t.id for t in tasks] == ["t0", "t1"]
    assert [len(t.test_pairs) for t in tasks] == [2, 1]
    assert all(out is None for t in tasks for _, out in t.test_pairs)
    with pytest.raises(DataError, match="no x_solutions.json beside it"):
        load_challenges_file(chal)
    # a solutions file missing a task: unknown for predict, refused otherwise
    _write(tmp_path / "x_solutions.json", {"t0": [[[1]], [[2, 2]]]})
    tasks = load_challenges_file(chal, need_outputs=False)
    assert tasks[0].has_test_outputs and not tasks[1].has_test_outputs
    with pytest.raises(DataError, match="no solutions for task t1"):
        load_challenges_file(chal)


def test_challenges_own_outputs_kept_and_conflict_refused(tmp_path):
    chal = {"t": {"train": TRAIN, "test": [{"input": [[7]], "output": [[3]]}]}}
    _write(tmp_path / "x_challenges.json", chal)
    _write(tmp_path / "x_solutions.json", {"t": [[[3]]]})  # agrees
    (t,) = load_challenges_file(tmp_path / "x_challenges.json")
    assert t.test_pairs[0][1].tolist() == [[3]]
    _write(tmp_path / "x_solutions.json", {"t": [[[4]]]})  # disagrees
    for need in (True, False):
        with pytest.raises(DataError, match=r"test\[0\] output differs"):
            load_challenges_file(tmp_path / "x_challenges.json", need_outputs=need)
    # without a solutions file its own outputs are the outputs
    (tmp_path / "x_solutions.json").unlink()
    (t,) = load_challenges_file(tmp_path / "x_challenges.json", need_outputs=False)
    assert t.test_pairs[0][1].tolist() == [[3]]


@pytest.mark.parametrize(
    "content, needle",
    [
        (b'{"t": "\xff\xfe"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
@pytest.mark.parametrize("which", ["challenges", "solutions"])
def test_bad_challenges_files_one_line(tmp_path, content, needle, which):
    ok = {"t": {"train": TRAIN, "test": [{"input": [[7]]}]}}
    _write(tmp_path / "x_challenges.json", ok)
    _write(tmp_path / "x_solutions.json", {"t": [[[1]]]})
    (tmp_path / f"x_{which}.json").write_bytes(content)
    with pytest.raises(DataError) as err:
        load_challenges_file(tmp_path / "x_challenges.json")
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(str(tmp_path / f"x_{which}.json"))


def test_training_and_eval_refuse_unscorable_tasks(tmp_path, capsys):
    chal = _write(
        tmp_path / "x_challenges.json", {"t": {"train": TRAIN, "test": [{"input": [[7]]}]}}
    )
    with pytest.raises(DataError, match="no x_solutions.json"):
        ArcDataset.build(DataConfig(source=str(chal), canvas=8, n_aug=2), seed=0)
    argv = ["train", "--preset", "debug", "--out", str(tmp_path / "run"), "--source", str(chal),
            "--canvas", "8", "--quiet", "--steps", "1"]  # fmt: skip
    assert main(argv) == 2
    assert "x_solutions.json" in one_line(capsys, "hrm-fast")
    assert not (tmp_path / "run" / "checkpoints").exists()
