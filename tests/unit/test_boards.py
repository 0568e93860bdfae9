"""BoardDataset / BoardSampler: on-device Sudoku and maze augmentation keeps valid pairs."""

import numpy as np
import pytest
import torch

from hrm_fast import maze, sudoku
from hrm_fast.boards import BoardDataset, BoardSampler, dihedral_index_maps


@pytest.fixture(scope="module")
def sudoku_data():
    return BoardDataset.from_sudoku(sudoku.generate(6, seed=0), sudoku.generate(2, seed=1))


@pytest.fixture(scope="module")
def maze_data():
    train = maze.generate(4, seed=0, min_path=40)
    return BoardDataset.from_maze(train, maze.generate(2, seed=1), augment=True)


def test_dataset_shape_and_ids(sudoku_data, maze_data):
    assert (sudoku_data.seq_len, sudoku_data.vocab_size, sudoku_data.num_puzzle_ids) == (81, 11, 2)
    assert (maze_data.seq_len, maze_data.vocab_size, maze_data.num_puzzle_ids) == (900, 6, 2)
    assert sudoku_data.num_train_pairs == 6
    test = sudoku_data.test_batch(0, 2)
    assert test["inputs"].shape == (2, 81) and test["inputs"].dtype == torch.int32
    assert test["puzzle_identifiers"].tolist() == [1, 1]
    assert torch.equal(test["labels"], torch.as_tensor(sudoku_data.test_labels).int())


@pytest.mark.parametrize("box", [2, 3])
def test_sudoku_augmentation_keeps_a_valid_pair(box):
    data = BoardDataset.from_sudoku(sudoku.generate(4, 0, box=box), sudoku.generate(1, 1, box=box))
    torch.manual_seed(0)
    batch = BoardSampler(data, "cpu", "reference").sample(64)
    n = box * box
    assert batch["inputs"].shape == (64, n * n) and batch["inputs"].dtype == torch.int32
    assert batch["labels"].dtype == torch.int32 and (batch["puzzle_identifiers"] == 1).all()
    originals = {bytes(p) for p in data.train_inputs}
    changed = 0
    for x, y in zip(batch["inputs"].numpy(), batch["labels"].numpy(), strict=True):
        puzzle, solution = sudoku.decode(x), sudoku.decode(y)
        assert (y >= 2).all()  # every cell labelled with a digit
        assert sudoku.is_solution(puzzle, solution, box)  # givens kept, rows/cols/boxes valid
        assert sudoku.solve(puzzle, box).solutions == 1
        changed += bytes(x.astype(np.uint8)) not in originals
    assert changed >= 60


def test_sudoku_maps_cover_transposes_and_digits():
    data = BoardDataset.from_sudoku(sudoku.generate(2, 0), sudoku.generate(1, 1))
    torch.manual_seed(1)
    d = BoardSampler(data, "cpu", "reference").draw(400)
    index_map, value_map = d["index_map"], d["value_map"]
    assert (value_map[:, :2] == torch.tensor([0, 1])).all()
    assert (value_map.sort(dim=1).values == torch.arange(11)).all()
    assert (index_map.sort(dim=1).values == torch.arange(81)).all()
    # Plain maps read cells (0,0) and (0,1) from one source row; transposed ones from one column.
    transposed = (index_map[:, 0] // 9 != index_map[:, 1] // 9).float().mean().item()
    assert 0.35 < transposed < 0.65
    # Row 0 of the output comes from any of the 9 rows (bands and rows in bands both shuffle).
    plain = index_map[:, 0] // 9 == index_map[:, 1] // 9
    assert len(set((index_map[plain, 0] // 9).tolist())) == 9


def test_maze_augmentation_keeps_a_valid_pair(maze_data):
    torch.manual_seed(0)
    sampler = BoardSampler(maze_data, "cpu", "reference")
    d = sampler.draw(40)
    inputs, labels = sampler.augment(d)
    seen = set()
    maps = dihedral_index_maps(30)
    for b in range(40):
        q, a = maze.decode(inputs[b].numpy()), maze.decode(labels[b].numpy())
        path, unique = maze.shortest_path(q, 30)
        assert unique and np.array_equal(maze.label_of(q, path), a)
        seen.add(int((maps == d["index_map"][b]).all(dim=1).nonzero()[0]))
    assert seen == set(range(8))


def test_maze_without_augmentation_is_the_board(maze_data):
    plain = BoardDataset.from_maze(
        maze.generate(2, seed=0, min_path=40), maze.generate(1, seed=1), augment=False
    )
    sampler = BoardSampler(plain, "cpu", "reference")
    d = sampler.draw(6)
    inputs, labels = sampler.augment(d)
    want = torch.as_tensor(plain.train_inputs)[d["board"]].int()
    assert torch.equal(inputs, want)
    assert torch.equal(labels, torch.as_tensor(plain.train_labels)[d["board"]].int())


def test_dihedral_maps_are_the_group():
    maps = dihedral_index_maps(5)
    assert torch.equal(maps[0], torch.arange(25))
    assert len({tuple(m.tolist()) for m in maps}) == 8
    for m in maps:  # closed under composition
        for n in maps:
            assert any(torch.equal(m[n], k) for k in maps)


@pytest.mark.interpret
def test_fused_sampler_matches_reference(sudoku_data, maze_data):
    from hrm_fast.kernels.dispatch import triton_on_cpu

    for data in (sudoku_data, maze_data):
        torch.manual_seed(3)
        want = BoardSampler(data, "cpu", "reference").sample(5)
        torch.manual_seed(3)
        with triton_on_cpu():
            got = BoardSampler(data, "cpu", "fused").sample(5)
        for k in want:
            assert torch.equal(got[k], want[k]), k


def _cfg(**fields):
    from hrm_fast.config import DataConfig

    return DataConfig(**fields)


def test_build_dataset_generated_sets_and_canvas_check():
    from hrm_fast.data import ArcDataset, DeviceSampler, build_dataset, dataset_kind, make_sampler
    from hrm_fast.errors import UserError

    cfg = _cfg(source="sudoku-gen", canvas=4, sudoku_box=2, gen_train=30, gen_test=30)
    data = build_dataset(cfg, seed=0)
    assert dataset_kind(cfg) == "sudoku" and data.seq_len == 16 and data.vocab_size == 6
    train = {row.tobytes() for row in data.train_inputs}
    assert 0 < len(data.test_inputs) <= 30  # 4x4 repeats are dropped from the test set
    assert not any(row.tobytes() in train for row in data.test_inputs)
    assert make_sampler(data).sample(3)["inputs"].shape == (3, 16)
    again = build_dataset(cfg, seed=5)  # the train seed does not change the data
    assert np.array_equal(again.train_inputs, data.train_inputs)
    with pytest.raises(UserError, match="--canvas 30: sudoku boards are 4x4; set --canvas 4"):
        build_dataset(_cfg(source="sudoku-gen", sudoku_box=2, gen_train=2, gen_test=1), 0)
    with pytest.raises(UserError, match="--source sudoku-gen: only 0 of 2"):
        build_dataset(_cfg(source="sudoku-gen", canvas=4, sudoku_box=2, gen_train=2,
                           min_difficulty=10**6), 0)  # fmt: skip
    mazes = build_dataset(_cfg(source="maze-gen", gen_train=2, gen_test=1, min_difficulty=50), 0)
    assert mazes.kind == "maze" and (mazes.train_ratings >= 50).all()
    assert dataset_kind(_cfg(source="arcagi")) == "arc"
    assert ArcDataset is not None and DeviceSampler is not None


def test_build_dataset_reads_the_official_csv(tmp_path):
    from hrm_fast.board_csv import write_rows
    from hrm_fast.data import build_dataset
    from hrm_fast.errors import UserError

    write_rows(tmp_path / "train.csv", sudoku.to_csv_rows(sudoku.generate(5, seed=0)))
    write_rows(tmp_path / "test.csv", sudoku.to_csv_rows(sudoku.generate(2, seed=1)))
    data = build_dataset(_cfg(source=f"sudoku:{tmp_path / 'train.csv'}", canvas=9), 0)
    assert (len(data.train_inputs), len(data.test_inputs)) == (5, 2)
    first = build_dataset(_cfg(source=f"sudoku:{tmp_path / 'train.csv'}", canvas=9,
                               max_tasks=3, eval_source="none"), 0)  # fmt: skip
    assert (len(first.train_inputs), len(first.test_inputs)) == (3, 0)
    (tmp_path / "test.csv").unlink()
    with pytest.raises(UserError, match="--eval-source: no test.csv beside"):
        build_dataset(_cfg(source=f"sudoku:{tmp_path / 'train.csv'}", canvas=9), 0)


def test_exact_match_and_text(sudoku_data):
    from hrm_fast.boards import board_text, exact_match

    batch = sudoku_data.test_batch(0, 2)
    pred = batch["labels"].clone()
    pred[1, 40] = 2 if pred[1, 40] != 2 else 3
    assert exact_match(pred, batch["labels"]).tolist() == [True, False]
    ignored = batch["labels"].clone()
    ignored[1, 40] = -100
    assert exact_match(pred, ignored).tolist() == [True, True]
    text = board_text("sudoku", sudoku_data.test_inputs[0], 9).splitlines()
    assert len(text) == 9 and all(len(line) == 9 for line in text) and "." in "".join(text)
    assert board_text("maze", maze.encode(maze.from_text("#SG o #  ")), 3) == "#SG\n o \n#  "


def test_make_boards_writes_official_csvs_that_train_reads(tmp_path, capsys):
    from hrm_fast.cli import main
    from hrm_fast.data import build_dataset

    out = tmp_path / "sudoku"
    assert main(["make-boards", "sudoku", "--out", str(out), "--gen-train", "6",
                 "--gen-test", "2", "--max-blanks", "40"]) == 0  # fmt: skip
    data = build_dataset(_cfg(source=f"sudoku:{out / 'train.csv'}", canvas=9), 0)
    assert (len(data.train_inputs), len(data.test_inputs)) == (6, 2)
    assert ((data.train_inputs == 1).sum(axis=1) <= 40).all()
    assert main(["make-boards", "sudoku", "--out", str(out), "--sudoku-box", "2"]) == 2
    assert main(["make-boards", "maze", "--out", str(out), "--gen-train", "1",
                 "--min-difficulty", "100000", "--gen-test", "0"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "hrm-fast: --sudoku-box: the official CSV format holds 9x9 boards (box 3)"
    assert err[1].startswith("hrm-fast: --source maze-gen: only 0 of 1 mazes")
