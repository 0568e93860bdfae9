"""Which rows of a checkpoint's puzzle-embedding table belong to which task.

The table is laid out in blocks. Block 0 is training's: the puzzle tasks
``payload["dataset"]["task_ids"]`` in order, first id 1 (id 0 is the blank id), the config's
``data.n_aug`` and ``data.puzzle_id_per``, and the augmentation pool drawn from ``train.seed``
(what ``ArcDataset.build`` lays out). Blocks appended later (test-time adaptation adds rows for
new tasks) are listed in ``payload["dataset"]["puzzle_blocks"]``, each a plain dict
``{"task_ids": [...], "first_id": int, "n_aug": int, "pool_seed": int, "per": "augmentation"
| "task"}``. Task t of a block predicts augmentation k with pool entry
``sample_pool(len(task_ids), n_aug, pool_seed)[t, k]`` and puzzle id ``first_id + t * n_aug + k``
(one id per augmentation) or ``first_id + t`` (one per task). A task id in a later block
replaces an earlier one's rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hrm_fast.errors import UserError
from hrm_fast.grid_transforms import sample_pool


@dataclass
class TaskRows:
    """A task's puzzle ids and augmentations: augmentation k uses ``ids[k]``, ``dihedral[k]``
    and ``colour_map[k]``."""

    ids: np.ndarray  # int64 [K]
    dihedral: np.ndarray  # int64 [K], entry 0 the identity
    colour_map: np.ndarray  # uint8 [K, 10], entry 0 the identity

    @property
    def n_aug(self) -> int:
        return len(self.ids)

    @classmethod
    def of_dataset(cls, dataset, t: int) -> TaskRows:
        """Puzzle task ``t`` of an ``ArcDataset`` (its training layout)."""
        k = np.arange(dataset.n_aug)
        ids = np.asarray(dataset.puzzle_id(t, k), np.int64)
        return cls(ids, dataset.dihedral[t], dataset.colour_map[t])


@dataclass
class PuzzleBlock:
    task_ids: list[str]
    first_id: int
    n_aug: int
    pool_seed: int
    per: str = "augmentation"

    @property
    def num_ids(self) -> int:
        return len(self.task_ids) * (self.n_aug if self.per == "augmentation" else 1)

    def to_dict(self) -> dict:
        return dict(task_ids=list(self.task_ids), first_id=self.first_id, n_aug=self.n_aug,
                    pool_seed=self.pool_seed, per=self.per)  # fmt: skip

    def rows(self) -> dict[str, TaskRows]:
        if not self.task_ids:
            return {}
        dihedral, colour_map = sample_pool(len(self.task_ids), self.n_aug, self.pool_seed)
        k = np.arange(self.n_aug, dtype=np.int64)
        out = {}
        for t, tid in enumerate(self.task_ids):
            if self.per == "augmentation":
                ids = self.first_id + t * self.n_aug + k
            else:
                ids = np.full(self.n_aug, self.first_id + t, np.int64)
            out[tid] = TaskRows(ids, dihedral[t], colour_map[t])
        return out


def checkpoint_blocks(payload: dict, cfg) -> list[PuzzleBlock]:
    """The blocks of a checkpoint's table (training's first); a malformed entry is a
    UserError naming the checkpoint."""
    where = payload.get("path", "checkpoint")
    dataset = payload.get("dataset") or {}
    task_ids = dataset.get("task_ids")
    if task_ids is None:  # converted official weights: no task list, only the blank id is known
        task_ids = []
    blocks = [
        PuzzleBlock(
            [str(t) for t in task_ids], 1, cfg.data.n_aug, cfg.train.seed, cfg.data.puzzle_id_per
        )
    ]
    for n, raw in enumerate(dataset.get("puzzle_blocks") or []):
        try:
            block = PuzzleBlock(
                [str(t) for t in raw["task_ids"]],
                int(raw["first_id"]),
                int(raw["n_aug"]),
                int(raw["pool_seed"]),
                str(raw.get("per", "augmentation")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where}: damaged checkpoint: puzzle_blocks[{n}]: {e!r}") from None
        if block.first_id < 1 or block.n_aug < 1 or block.per not in ("augmentation", "task"):
            raise UserError(f"{where}: damaged checkpoint: puzzle_blocks[{n}] = {raw!r}")
        blocks.append(block)
    return blocks


def checkpoint_task_rows(payload: dict, cfg, num_ids: int) -> dict[str, TaskRows]:
    """Task id -> its rows, for every task the checkpoint's table knows; ``num_ids`` is the
    table's row count, which every block must fit in."""
    rows: dict[str, TaskRows] = {}
    for n, block in enumerate(checkpoint_blocks(payload, cfg)):
        end = block.first_id + block.num_ids
        if block.task_ids and end > num_ids:
            raise UserError(
                f"{payload.get('path', 'checkpoint')}: puzzle-id block {n} needs ids up to "
                f"{end - 1} but the table has {num_ids} rows; is it the checkpoint's own data?"
            )
        rows.update(block.rows())
    return rows


def table_rows(payload: dict) -> int:
    """Rows of the checkpoint's puzzle-embedding table (1: the blank id only)."""
    table = payload["model"].get("inner.puzzle_emb.weights")
    return int(table.shape[0]) if table is not None and table.ndim == 2 else 1
