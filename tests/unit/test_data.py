"""Task loading / validation, the dataset splits and pool, and the on-device sampler."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hrm_fast.arc_files import load_tasks
from hrm_fast.config import DataConfig
from hrm_fast.data import ArcDataset, DeviceSampler, GridBank
from hrm_fast.errors import DataError
from hrm_fast.grid_transforms import (
    IGNORE,
    augment_batch_ref,
    augment_example_np,
    encode_grid_np,
    encode_pair_np,
    invert_batch_ref,
)

GRID = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)


def _task(n_train=2, n_test=1, seed=0, max_side=5):
    rng = np.random.default_rng(seed)

    def pair():
        h, w, ho, wo = rng.integers(1, max_side + 1, 4)
        return {
            "input": rng.integers(0, 10, (h, w)).tolist(),
            "output": rng.integers(0, 10, (ho, wo)).tolist(),
        }

    return {"train": [pair() for _ in range(n_train)], "test": [pair() for _ in range(n_test)]}


def _write_dir(root: Path, n_tasks, seed=0, **kw):
    root.mkdir(parents=True, exist_ok=True)
    for t in range(n_tasks):
        (root / f"task{t:03d}.json").write_text(json.dumps(_task(seed=seed + t, **kw)))
    return root


# ---------------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------------


def test_encode_hand_written_canvas():
    # colour k -> k + 2, EOS (1) closes the row below and the column right, corner PAD (0).
    want = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 0, 3, 4, 5, 1],
            [0, 0, 6, 7, 8, 1],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(encode_grid_np(GRID, (1, 2), 6), want)
    # At the bottom-right edge there is no room for EOS.
    edge = np.zeros((6, 6), int)
    edge[4:, 3:] = GRID + 2
    np.testing.assert_array_equal(encode_grid_np(GRID, (4, 3), 6), edge)
    # Offset 0: EOS row 2 over cols 0-2 and col 3 over rows 0-1.
    x, y = encode_pair_np(GRID, GRID[:1], (0, 0), 6)
    assert x.dtype == np.int32 and x.shape == (36,)
    np.testing.assert_array_equal(
        x.reshape(6, 6)[:3, :4], [[3, 4, 5, 1], [6, 7, 8, 1], [1, 1, 1, 0]]
    )
    lab = y.reshape(6, 6)
    np.testing.assert_array_equal(lab[:2, :4], [[3, 4, 5, 1], [1, 1, 1, IGNORE]])
    assert (lab[2:] == IGNORE).all() and (lab[:, 4:] == IGNORE).all()


def test_encode_decode_round_trip():
    canvas = 6
    bank = GridBank.from_pairs([(GRID, GRID.T.copy())], canvas)
    cmap = torch.tensor([[0, 3, 1, 2, 9, 8, 7, 6, 5, 4]], dtype=torch.uint8)
    for tid in range(8):
        args = (bank.inputs, bank.outputs, bank.shapes, torch.tensor([0]), torch.tensor([tid]))
        x, y = augment_batch_ref(*args, cmap, torch.tensor([[0, 0]]), canvas)
        x_np, _ = augment_example_np(GRID, GRID.T, tid, cmap[0].numpy(), (0, 0), canvas)
        np.testing.assert_array_equal(x[0].numpy(), x_np)
        grids, shp = invert_batch_ref(x, torch.tensor([tid]), cmap, canvas)
        assert shp.tolist() == [[2, 3]]
        np.testing.assert_array_equal(grids[0, :2, :3].numpy(), GRID)
        grids, shp = invert_batch_ref(y, torch.tensor([tid]), cmap, canvas)
        assert shp.tolist() == [[3, 2]]
        np.testing.assert_array_equal(grids[0, :3, :2].numpy(), GRID.T)


# ---------------------------------------------------------------------------------------------
# loading and validation
# ---------------------------------------------------------------------------------------------


def test_load_directory(tmp_path):
    root = _write_dir(tmp_path / "tasks", 4)
    (root / "notes.txt").write_text("ignored")
    tasks = load_tasks(root, "training")
    assert [t.id for t in tasks] == ["task000", "task001", "task002", "task003"]
    raw = _task(seed=2)
    t = tasks[2]
    assert len(t.train_pairs) == 2 and len(t.test_pairs) == 1
    for (a, b), want in zip(t.train_pairs + t.test_pairs, raw["train"] + raw["test"], strict=True):
        assert a.dtype == np.uint8 and b.dtype == np.uint8
        np.testing.assert_array_equal(a, want["input"])
        np.testing.assert_array_equal(b, want["output"])
    # A split subdirectory wins over the directory's own files.
    _write_dir(root / "evaluation", 2, seed=10)
    assert len(load_tasks(root, "evaluation")) == 2
    assert len(load_tasks(root, "training")) == 4


def _grid_task(grid):
    return {"train": [{"input": [[1]], "output": [[1]]}, {"input": grid, "output": [[0]]}],
            "test": [{"input": [[1]], "output": [[2]]}]}  # fmt: skip


RAGGED = {
    "train": [{"input": [[1]], "output": [[1]]}] * 2
    + [{"input": [[1]], "output": [[1] * 5] * 3 + [[1] * 4]}],
    "test": [{"input": [[1]], "output": [[1]]}],
}

BAD = [
    ("malformed", '{"train": [{"input": [[1]], \n "output": [[1]]}', ["line 2", "col"]),
    ("too_big", _grid_task([[1] * 31] * 2), ["train[1].input", "2x31", "30x30"]),
    ("too_tall", _grid_task([[1]] * 31), ["train[1].input", "31x1"]),
    ("colour", _grid_task([[1, 2], [3, 10]]), ["train[1].input[1][1]", "10", "0-9"]),
    ("negative", _grid_task([[1, -1]]), ["train[1].input[0][1]", "-1"]),
    ("float", _grid_task([[1, 2.5]]), ["train[1].input[0][1]", "2.5"]),
    ("string", _grid_task([["1", 2]]), ["train[1].input[0][0]", "'1'"]),
    ("bool", _grid_task([[True, 2]]), ["train[1].input[0][0]", "True"]),
    ("ragged", RAGGED, ["train[2].output row 3 has 4 cells, expected 5"]),
    ("empty_grid", _grid_task([]), ["train[1].input", "empty"]),
    ("empty_row", _grid_task([[]]), ["train[1].input", "empty"]),
    ("no_train_pairs", {"train": [], "test": [{"input": [[1]], "output": [[1]]}]},
     ["'train'", "no pairs"]),
    ("no_train_key", {"test": [{"input": [[1]], "output": [[1]]}]}, ["missing 'train'"]),
    ("no_test_key", {"train": [{"input": [[1]], "output": [[1]]}]}, ["missing 'test'"]),
    ("no_output", {"train": [{"input": [[1]]}], "test": []}, ["train[0]", "'output'"]),
    ("not_object", [1, 2], ["top level", "list"]),
]  # fmt: skip


@pytest.mark.parametrize("name,content,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_task_file(tmp_path, name, content, needles):
    root = tmp_path / "tasks"
    _write_dir(root, 2)
    path = root / f"{name}.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DataError) as err:
        load_tasks(root, "training")
    msg = str(err.value)
    assert "\n" not in msg, f"message must be one line: {msg!r}"
    assert msg.startswith(str(path) + ": "), msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_canvas_limit_follows_config(tmp_path):
    root = _write_dir(tmp_path / "t", 1, max_side=8)
    (root / "big.json").write_text(json.dumps(_grid_task([[1] * 8] * 8)))
    load_tasks(root, "training", canvas=8)
    with pytest.raises(
        DataError, match=r"big\.json: train\[1\]\.input is 8x8, larger than the 7x7"
    ):
        load_tasks(root, "training", canvas=7)


def test_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(DataError, match="nope: no such file or directory"):
        load_tasks(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    with pytest.raises(DataError, match=r"empty: directory has no \.json task files"):
        load_tasks(tmp_path / "empty")


def test_arcagi_loads_400_400():
    train = load_tasks("arcagi", "training")
    evals = load_tasks("arcagi", "evaluation")
    assert len(train) == 400 and len(evals) == 400
    assert [t.id for t in train] == sorted(t.id for t in train)
    assert not {t.id for t in train} & {t.id for t in evals}
    a, b = train[0].train_pairs[0]
    assert a.dtype == np.uint8 and a.ndim == 2 and a.max() <= 9


def test_arcagi_small_canvas_keeps_fitting_tasks():
    # The debug preset (canvas 8) trains on the ARC tasks that fit; a directory would raise.
    tasks = load_tasks("arcagi", "training", canvas=8)
    assert 10 < len(tasks) < 400
    assert max(max(g.shape) for t in tasks for p in t.train_pairs + t.test_pairs for g in p) <= 8


# ---------------------------------------------------------------------------------------------
# dataset: splits, pool, puzzle ids
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("arc")
    train = _write_dir(root / "train", 5, seed=0, n_train=3, n_test=2)
    evals = _write_dir(root / "eval", 3, seed=100, n_train=2, n_test=2)
    return train, evals


def test_dataset_with_eval_dir(dirs):
    train, evals = dirs
    cfg = DataConfig(
        source=str(train), eval_source=str(evals), n_aug=4, include_eval_demos=True, canvas=8
    )
    ds = ArcDataset.build(cfg, seed=0)
    assert ds.num_tasks == 8 and ds.task_ids[:5] == [f"task{t:03d}" for t in range(5)]
    assert ds.pair_count.tolist() == [5] * 5 + [2] * 3  # training tasks: train + test pairs
    assert ds.pair_start.tolist() == [0, 5, 10, 15, 20, 25, 27, 29]
    assert [e.tolist() for e in ds.eval_pairs] == [[31, 32], [33, 34], [35, 36]]
    assert ds.eval_task_puzzle.tolist() == [5, 6, 7] and len(ds.bank) == 37
    # Bank holds the held-out pairs exactly.
    held = load_tasks(evals)[1].test_pairs[0]
    a, b = ds.bank.pair(int(ds.eval_pairs[1][0]))
    np.testing.assert_array_equal(a, held[0])
    np.testing.assert_array_equal(b, held[1])
    assert ds.num_puzzle_ids == 1 + 8 * 4
    assert ds.puzzle_id(0, 0) == 1 and ds.puzzle_id(7, 3) == 32 and ds.puzzle_id(2, 1) == 10
    # Without eval demos the eval tasks get no puzzle slot (blank id).
    ds2 = ArcDataset.build(DataConfig(**{**cfg.__dict__, "include_eval_demos": False}), seed=0)
    assert ds2.num_tasks == 5 and ds2.eval_task_puzzle.tolist() == [-1, -1, -1]
    ds3 = ArcDataset.build(DataConfig(**{**cfg.__dict__, "eval_source": "none"}), seed=0)
    assert ds3.eval_task_ids == [] and ds3.num_tasks == 5


def test_dataset_dir_without_eval_source_holds_out_tests(dirs):
    train, _ = dirs
    cfg = DataConfig(source=str(train), n_aug=3, canvas=8, max_tasks=4, puzzle_id_per="task")
    ds = ArcDataset.build(cfg, seed=1)
    assert ds.num_tasks == 4 and ds.pair_count.tolist() == [3] * 4
    assert ds.eval_task_ids == ds.task_ids and ds.eval_task_puzzle.tolist() == [0, 1, 2, 3]
    assert [e.tolist() for e in ds.eval_pairs] == [[12, 13], [14, 15], [16, 17], [18, 19]]
    assert ds.num_puzzle_ids == 5 and ds.puzzle_id(3, 2) == 4


def test_pool_and_ids_reproducible(dirs):
    train, evals = dirs
    cfg = DataConfig(source=str(train), eval_source=str(evals), n_aug=6, canvas=8)
    a, b, c = (ArcDataset.build(cfg, seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.dihedral, b.dihedral)
    np.testing.assert_array_equal(a.colour_map, b.colour_map)
    assert torch.equal(a.bank.inputs, b.bank.inputs)
    assert not np.array_equal(a.colour_map, c.colour_map)
    assert (a.dihedral[:, 0] == 0).all() and (a.colour_map[:, 0] == np.arange(10)).all()
    assert (a.colour_map[..., 0] == 0).all()


def test_arcagi_dataset_protocols():
    ds = ArcDataset.build(DataConfig(n_aug=2, max_tasks=3, include_eval_demos=True), seed=0)
    assert ds.num_tasks == 6 and len(ds.eval_task_ids) == 3
    train = load_tasks("arcagi", "training")[:3]
    assert ds.pair_count[:3].tolist() == [len(t.train_pairs) + len(t.test_pairs) for t in train]
    assert ds.eval_task_puzzle.tolist() == [3, 4, 5]


# ---------------------------------------------------------------------------------------------
# sampler
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(dirs):
    train, evals = dirs
    cfg = DataConfig(
        source=str(train), eval_source=str(evals), n_aug=5, include_eval_demos=True, canvas=7
    )
    return ArcDataset.build(cfg, seed=3)


def test_sampler_matches_numpy_pipeline(dataset):
    sampler = DeviceSampler(dataset, "cpu", "reference")
    batch = 37
    torch.manual_seed(11)
    d = sampler.draw(batch)
    torch.manual_seed(11)
    out = sampler.sample(batch)
    assert out["inputs"].shape == out["labels"].shape == (batch, 49)
    assert out["inputs"].dtype == out["labels"].dtype == torch.int32
    assert out["puzzle_identifiers"].shape == (batch,)
    assert out["puzzle_identifiers"].dtype == torch.int32
    t, k, pair = d["task"], d["aug"], d["pair"]
    start = torch.from_numpy(dataset.pair_start)[t]
    assert ((pair >= start) & (pair < start + torch.from_numpy(dataset.pair_count)[t])).all()
    assert torch.equal(out["puzzle_identifiers"].long(), dataset.puzzle_id(t, k))
    assert torch.equal(d["dihedral"], torch.from_numpy(dataset.dihedral)[t, k])
    for b in range(batch):
        a, y = dataset.bank.pair(int(pair[b]))
        x_np, y_np = augment_example_np(
            a,
            y,
            int(d["dihedral"][b]),
            d["colour_map"][b].numpy(),
            tuple(d["offset"][b].tolist()),
            7,
        )
        np.testing.assert_array_equal(out["inputs"][b].numpy(), x_np)
        np.testing.assert_array_equal(out["labels"][b].numpy(), y_np)
    # Labels are -100 exactly where the output canvas is PAD: never 0, and EOS is kept.
    assert not (out["labels"] == 0).any() and (out["labels"] == 1).any()


def test_sampler_covers_tasks_and_is_reproducible(dataset):
    sampler = DeviceSampler(dataset, "cpu", "fused")  # CPU tensors dispatch to the reference
    torch.manual_seed(0)
    a = sampler.sample(400)
    torch.manual_seed(0)
    b = sampler.sample(400)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    c = sampler.sample(400)
    assert not torch.equal(a["inputs"], c["inputs"])
    ids = a["puzzle_identifiers"]
    assert ids.min() >= 1 and ids.max() < dataset.num_puzzle_ids
    assert len(ids.unique()) > 30  # 40 (task, aug) slots, 400 draws


def test_sampler_no_translate(dirs):
    train, _ = dirs
    cfg = DataConfig(source=str(train), eval_source="none", n_aug=2, canvas=7, translate=False)
    sampler = DeviceSampler(ArcDataset.build(cfg, seed=0), "cpu", "reference")
    torch.manual_seed(0)
    d = sampler.draw(64)
    assert (d["offset"] == 0).all()
    inputs = sampler.sample(64)["inputs"].reshape(64, 7, 7)
    assert (inputs[:, 0, 0] >= 2).all()  # every grid starts at the top-left corner


def test_sampler_compiles_fullgraph(dataset):
    sampler = DeviceSampler(dataset, "cpu", "reference")
    compiled = torch.compile(sampler.sample, fullgraph=True, backend="aot_eager")
    torch.manual_seed(5)
    out = compiled(16)
    torch.manual_seed(5)
    again = compiled(16)
    assert torch.equal(out["inputs"], again["inputs"])
    assert out["inputs"].shape == (16, 49) and out["labels"].dtype == torch.int32
    assert not (out["labels"] == 0).any() and (out["inputs"] >= 0).all()


def test_sampler_by_pair_weighs_tasks_by_their_pairs(dataset):
    """sample_by="pair": every trainable pair equally often (what TRM's epoch sampler gives
    each pair on average); "task": every task equally often, then a pair of it."""
    counts = dataset.pair_count  # 5 tasks of 5 pairs, 3 of 2: 31 pairs
    n_pairs, n_tasks, n = int(counts.sum()), len(counts), 40_000
    pair_task = torch.from_numpy(np.repeat(np.arange(n_tasks), counts))
    expected = {
        "pair": np.full(n_pairs, 1 / n_pairs),  # 0.032 each
        "task": np.repeat(1 / (n_tasks * counts), counts),  # 0.025 or 0.0625
    }
    for sample_by, want in expected.items():
        cfg = dataclasses.replace(dataset.cfg, sample_by=sample_by)
        sampler = DeviceSampler(dataclasses.replace(dataset, cfg=cfg), "cpu", "reference")
        torch.manual_seed(0)
        d = torch.compile(sampler.draw, fullgraph=True, backend="eager")(n)
        freq = np.bincount(d["pair"].numpy(), minlength=n_pairs) / n
        # Binomial sd at p = 0.032, n = 40000: 9e-4. The two rules differ by >= 0.007.
        assert np.abs(freq - want).max() < 4e-3, sample_by
        assert torch.equal(pair_task[d["pair"]], d["task"])
        assert torch.equal(d["puzzle"], dataset.puzzle_id(d["task"], d["aug"]))
        aug_freq = np.bincount(d["aug"].numpy(), minlength=dataset.n_aug) / n
        assert np.abs(aug_freq - 1 / dataset.n_aug).max() < 0.01


# ---------------------------------------------------------------------------------------------
# ARC-AGI-2, the ARC Prize / Kaggle format, mixed sources
# ---------------------------------------------------------------------------------------------


def test_arcagi2_loads_1000_120():
    train = load_tasks("arcagi2", "training")
    evals = load_tasks("arcagi2", "evaluation")
    assert len(train) == 1000 and len(evals) == 120
    assert not {t.id for t in train} & {t.id for t in evals}


def _write_kaggle(root: Path, name: str, tasks: dict, solutions: dict | None = None):
    """``{name}_challenges.json`` (test outputs removed) + ``{name}_solutions.json``."""
    root.mkdir(parents=True, exist_ok=True)
    challenges = {
        tid: {"train": t["train"], "test": [{"input": p["input"]} for p in t["test"]]}
        for tid, t in tasks.items()
    }
    if solutions is None:
        solutions = {tid: [p["output"] for p in t["test"]] for tid, t in tasks.items()}
    (root / f"{name}_challenges.json").write_text(json.dumps(challenges))
    (root / f"{name}_solutions.json").write_text(json.dumps(solutions))
    return root / f"{name}_challenges.json"


def test_kaggle_format_file_and_directory(tmp_path):
    raw = {f"k{t}": _task(n_test=2, seed=t) for t in range(3)}
    path = _write_kaggle(tmp_path / "kaggle", "arc-agi_concept", raw)
    tasks = load_tasks(path, "training")
    assert [t.id for t in tasks] == ["k0", "k1", "k2"]
    for task in tasks:
        want = raw[task.id]
        assert len(task.train_pairs) == 2 and len(task.test_pairs) == 2
        for (a, b), w in zip(task.test_pairs, want["test"], strict=True):  # outputs from solutions
            np.testing.assert_array_equal(a, w["input"])
            np.testing.assert_array_equal(b, w["output"])
    # A directory of challenges/solutions files: every file's tasks.
    _write_kaggle(tmp_path / "kaggle", "other", {"z9": _task(seed=9)})
    assert [t.id for t in load_tasks(tmp_path / "kaggle", "training")] == ["k0", "k1", "k2", "z9"]


@pytest.mark.parametrize(
    "solutions, needles",
    [
        ({"k0": [[[1]]]}, ["_solutions.json", "no solutions for task k1"]),
        ({"k0": [[[1]]], "k1": []}, ["task k1: 0 test outputs for 1 test inputs"]),
        ({"k0": [[[1]]], "k1": [[[1, 12]]]}, ["task k1", "test[0].output[0][1]", "12"]),
    ],
)
def test_kaggle_format_errors_are_one_line(tmp_path, solutions, needles):
    path = _write_kaggle(tmp_path, "x", {"k0": _task(seed=0), "k1": _task(seed=1)}, solutions)
    with pytest.raises(DataError) as err:
        load_tasks(path)
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_kaggle_format_needs_solutions_file(tmp_path):
    path = _write_kaggle(tmp_path, "x", {"k0": _task()})
    (tmp_path / "x_solutions.json").unlink()
    with pytest.raises(DataError, match=r"x_challenges\.json: no x_solutions\.json beside it"):
        load_tasks(path)


def test_mixed_sources(tmp_path):
    a = _write_dir(tmp_path / "a", 2)
    b = _write_kaggle(tmp_path / "b", "c", {"k0": _task(seed=5)})
    tasks = load_tasks(f"{a},{b}", "training")
    assert [t.id for t in tasks] == ["task000", "task001", "k0"]
    with pytest.raises(DataError, match="task task000 is also in"):
        load_tasks(f"{a},{a}", "training")
    # Mixing a built-in set: its evaluation split is the held-out one.
    cfg = DataConfig(source=f"arcagi,{b}", max_tasks=0, n_aug=2, include_eval_demos=False)
    ds = ArcDataset.build(cfg, seed=0)
    assert ds.num_tasks == 401 and ds.task_ids[-1] == "k0" and len(ds.eval_task_ids) == 400
