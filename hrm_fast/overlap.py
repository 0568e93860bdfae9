"""Train/test overlap by content: scored test pairs that are also pairs a model trains on.

Ids cannot show it (ARC-AGI-2's training set holds most of ARC-AGI-1's evaluation tasks under
the same ids, other sets rename them), so pairs are compared by the hash of their input grid and
of their output grid (shape and cells). A scored pair overlaps when some trained pair has the
same input and the same output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from hrm_fast.errors import UserError

Pair = tuple[np.ndarray, np.ndarray]


def grid_hash(grid) -> bytes:
    """Digest of a grid's shape and cells (raw colours)."""
    g = np.ascontiguousarray(np.asarray(grid, dtype=np.uint8))
    return hashlib.blake2b(repr(g.shape).encode() + g.tobytes(), digest_size=16).digest()


def pair_key(pair: Pair) -> tuple[bytes, bytes]:
    return grid_hash(pair[0]), grid_hash(pair[1])


@dataclass
class OverlapReport:
    n_scored_pairs: int
    n_overlapping_pairs: int
    task_ids: list[str]  # scored tasks with at least one overlapping test pair
    trained_task_ids: dict[str, list[str]] = field(default_factory=dict)  # -> trained tasks

    @property
    def any(self) -> bool:
        return self.n_overlapping_pairs > 0

    def to_dict(self) -> dict:
        return {
            "n_scored_pairs": self.n_scored_pairs,
            "n_overlapping_pairs": self.n_overlapping_pairs,
            "task_ids": list(self.task_ids),
            "trained_task_ids": {k: list(v) for k, v in self.trained_task_ids.items()},
        }

    def summary(self, limit: int = 5) -> str:
        """One line: counts and the first few overlapping task ids."""
        if not self.any:
            return f"no overlap: none of {self.n_scored_pairs} scored test pairs is a trained pair"
        ids = ", ".join(self.task_ids[:limit])
        more = f" and {len(self.task_ids) - limit} more" if len(self.task_ids) > limit else ""
        return (
            f"{self.n_overlapping_pairs} of {self.n_scored_pairs} scored test pairs "
            f"({len(self.task_ids)} tasks: {ids}{more}) are also training pairs (same input and "
            "output grids), so their scores are not held-out"
        )


def _as_named_pairs(tasks, side: str) -> Iterable[tuple[str, list[Pair]]]:
    """``(task_id, pairs)`` items, or ``Task`` objects: for side "train" all their pairs with a
    known output, for side "scored" their test pairs."""
    for t in tasks:
        if isinstance(t, tuple):
            yield t
        elif side == "train":
            yield t.id, [p for p in t.train_pairs + t.test_pairs if p[1] is not None]
        else:
            yield t.id, [p for p in t.test_pairs if p[1] is not None]


def check_overlap(train_tasks, scored_tasks) -> OverlapReport:
    """Compare by content the scored tasks' test pairs with the pairs trained on.

    Each argument is a list of ``Task`` (trained: every pair with an output; scored: its test
    pairs) or of ``(task_id, pairs)`` tuples naming exactly the pairs to compare.
    """
    trained: dict[tuple[bytes, bytes], list[str]] = {}
    for tid, pairs in _as_named_pairs(train_tasks, "train"):
        for p in pairs:
            owners = trained.setdefault(pair_key(p), [])
            if tid not in owners:
                owners.append(tid)
    n_scored = n_hit = 0
    hit_tasks: dict[str, list[str]] = {}
    for tid, pairs in _as_named_pairs(scored_tasks, "scored"):
        for p in pairs:
            n_scored += 1
            owners = trained.get(pair_key(p))
            if owners:
                n_hit += 1
                seen = hit_tasks.setdefault(tid, [])
                seen.extend(o for o in owners if o not in seen)
    return OverlapReport(n_scored, n_hit, list(hit_tasks), hit_tasks)


def dataset_overlap(dataset, n_tasks: int | None = None) -> OverlapReport:
    """Overlap of a data set's held-out test pairs (an ``ArcDataset``'s first ``n_tasks`` eval
    tasks) with its trainable pairs; for Sudoku / maze boards, held-out boards equal to a
    training board (puzzle and solution)."""
    if not hasattr(dataset, "bank"):  # boards: one pair per board
        n = len(dataset.test_inputs) if n_tasks is None else n_tasks
        boards = zip(dataset.train_inputs, dataset.train_labels, strict=True)
        trained = [("training boards", list(boards))]
        scored = [
            (f"held-out board {k}", [(dataset.test_inputs[k], dataset.test_labels[k])])
            for k in range(n)
        ]
        return check_overlap(trained, scored)
    bank = dataset.bank
    trained = [
        (tid, [bank.pair(int(p)) for p in range(start, start + count)])
        for tid, start, count in zip(
            dataset.task_ids, dataset.pair_start, dataset.pair_count, strict=True
        )
    ]
    n = len(dataset.eval_task_ids) if n_tasks is None else n_tasks
    scored = [
        (dataset.eval_task_ids[e], [bank.pair(int(p)) for p in dataset.eval_pairs[e]])
        for e in range(n)
    ]
    return check_overlap(trained, scored)


# Overlap the benchmarks ship with: ARC-AGI-1 evaluation task 070dd51e's test pair is a
# demonstration of training task 40853293. Every published ARC-AGI-1 score includes it, so the
# guard reports it but does not refuse a run for it (scored task -> trained tasks).
BENCHMARK_DUPLICATES = {"070dd51e": {"40853293"}}


def refuse_overlap(report: OverlapReport, allowed: bool, log=None) -> None:
    """At the start of training or adaptation: an overlap is a UserError (exit 2) unless
    ``allowed`` (``--allow-overlap true``) or it is only the benchmark's own duplicate; then a
    warning through ``log``."""
    if not report.any:
        return
    blocking = [
        tid
        for tid in report.task_ids
        if not set(report.trained_task_ids.get(tid, ())) <= BENCHMARK_DUPLICATES.get(tid, set())
    ]
    if blocking and not allowed:
        raise UserError(
            f"overlap: {report.summary()}; remove those tasks from the training data or pass "
            "--allow-overlap true"
        )
    if log is not None:
        why = "--allow-overlap true" if blocking else "ARC-AGI-1's own duplicate"
        log(f"warning ({why}): {report.summary()}")
