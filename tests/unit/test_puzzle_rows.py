"""The task-id -> puzzle-id rows table of a checkpoint: training's block is exactly the layout
``ArcDataset`` trains with, appended blocks (test-time adaptation) extend it, and a block that
does not fit the table is refused in one line."""

import numpy as np
import pytest

from hrm_fast.config import RunConfig
from hrm_fast.data import ArcDataset
from hrm_fast.errors import UserError
from hrm_fast.puzzle_rows import PuzzleBlock, TaskRows, checkpoint_task_rows
from tests.support.tasks import write_nonsquare_tasks


@pytest.mark.parametrize("per", ["augmentation", "task"])
def test_training_block_is_the_dataset_layout(tmp_path, per):
    cfg = RunConfig()
    cfg.data.source = str(write_nonsquare_tasks(tmp_path / "t", 3, seed=1))
    cfg.data.eval_source, cfg.data.n_aug, cfg.data.canvas = "", 5, 8
    cfg.data.puzzle_id_per = per
    cfg.train.seed = 11
    ds = ArcDataset.build(cfg.data, seed=cfg.train.seed)
    payload = {"dataset": {"task_ids": list(ds.task_ids)}}
    rows = checkpoint_task_rows(payload, cfg, ds.num_puzzle_ids)
    assert list(rows) == ds.task_ids
    for t, tid in enumerate(ds.task_ids):
        want = TaskRows.of_dataset(ds, t)
        got = rows[tid]
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.dihedral, want.dihedral)
        assert np.array_equal(got.colour_map, want.colour_map)
        assert got.dihedral[0] == 0 and list(got.colour_map[0]) == list(range(10))


def test_appended_block_extends_and_must_fit():
    cfg = RunConfig()
    cfg.data.n_aug, cfg.data.puzzle_id_per = 4, "augmentation"
    base = 1 + 2 * 4  # blank id + two trained tasks x 4 augmentations
    block = PuzzleBlock(["new0", "b"], first_id=base, n_aug=3, pool_seed=99)
    payload = {"dataset": {"task_ids": ["a", "b"], "puzzle_blocks": [block.to_dict()]}}
    rows = checkpoint_task_rows(payload, cfg, base + block.num_ids)
    assert sorted(rows) == ["a", "b", "new0"]
    assert rows["a"].ids.tolist() == [1, 2, 3, 4]
    assert rows["new0"].ids.tolist() == [base, base + 1, base + 2]
    assert rows["b"].ids.tolist() == [base + 3, base + 4, base + 5]  # the later block wins
    with pytest.raises(UserError, match="block 1 needs ids up to"):
        checkpoint_task_rows(payload, cfg, base + block.num_ids - 1)
    payload["dataset"]["puzzle_blocks"] = [{"task_ids": ["x"]}]
    with pytest.raises(UserError, match="puzzle_blocks"):
        checkpoint_task_rows(payload, cfg, 100)


def test_converted_checkpoint_knows_no_task():
    assert checkpoint_task_rows({}, RunConfig(), 10) == {}
