"""Scoring predictions: voting over augmentations, exact match, pixel accuracy, pass@k.

Identical grids (shape + cells) form a group; groups rank by count, ties by mean
sigmoid(q_halt). pass@k: one of the top k groups equals the target; a task counts as solved
when all its test pairs are. ``summarise`` splits tasks into seen (a learned puzzle id) and
unseen (the blank id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hrm_fast.evaluate import Item

TOP_GROUPS = 3  # groups kept in eval.json per test pair (grids for the top 2 only)
DEFAULT_PASS_K = (1, 2)


@dataclass
class Group:
    grid: np.ndarray  # uint8 [h, w]
    count: int
    mean_q: float  # mean sigmoid(q_halt) of its members
    first: int  # index of its first member (last-resort tie-break, deterministic)


def vote(grids: list[np.ndarray], q_halt_prob: list[float]) -> list[Group]:
    """Group identical grids (shape + cells); rank by count, then mean sigmoid(q_halt)."""
    groups: dict[tuple, list] = {}
    for i, (g, q) in enumerate(zip(grids, q_halt_prob, strict=True)):
        g = np.asarray(g, dtype=np.uint8)
        key = (g.shape, g.tobytes())
        if key not in groups:
            groups[key] = [g, 0, 0.0, i]
        groups[key][1] += 1
        groups[key][2] += float(q)
    out = [Group(g, n, s / n, i) for g, n, s, i in groups.values()]
    out.sort(key=lambda gr: (-gr.count, -gr.mean_q, gr.first))
    return out


def exact(pred: np.ndarray, target: np.ndarray) -> bool:
    pred, target = np.asarray(pred), np.asarray(target)
    return pred.shape == target.shape and bool(np.array_equal(pred, target))


def pixel_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Matching cells over the target's cell count; a shape mismatch compares the overlap."""
    pred, target = np.asarray(pred), np.asarray(target)
    if target.size == 0:
        return float(pred.size == 0)
    h = min(pred.shape[0], target.shape[0]) if pred.ndim == 2 else 0
    w = min(pred.shape[1], target.shape[1]) if pred.ndim == 2 else 0
    same = int((pred[:h, :w] == target[:h, :w]).sum()) if h and w else 0
    return same / target.size


@dataclass
class PairScore:
    pass1: bool
    pass2: bool
    pixel_accuracy: float
    groups: list[Group] = field(repr=False)
    hit_rank: int | None = None  # 0-based rank of the group equal to the target; None: none is

    @property
    def top(self) -> np.ndarray:
        return self.groups[0].grid

    def pass_at(self, k: int) -> bool:
        """One of the top ``k`` groups equals the target."""
        return self.hit_rank is not None and self.hit_rank < k


def score_pair(groups: list[Group], target: np.ndarray) -> PairScore:
    rank = next((i for i, g in enumerate(groups) if exact(g.grid, target)), None)
    top = groups[0].grid if groups else np.zeros((0, 0), np.uint8)
    hit = rank is not None
    return PairScore(hit and rank < 1, hit and rank < 2, pixel_accuracy(top, target), groups, rank)


def parse_pass_k(text: str) -> tuple[int, ...]:
    """``"1,2,10"`` -> (1, 2, 10): sorted, unique, each >= 1; ValueError otherwise."""
    try:
        ks = sorted({int(x) for x in str(text).split(",")})
    except ValueError:
        raise ValueError(
            f"expected a comma list of integers such as 1,2,10, got {text!r}"
        ) from None
    if not ks or ks[0] < 1:
        raise ValueError(f"every k must be >= 1, got {text!r}")
    return tuple(ks)


@dataclass
class TaskResult:
    e: int  # index among the dataset's eval tasks
    task_id: str
    has_puzzle_id: bool
    pairs: list[PairScore]
    n_aug: int

    def pass_at(self, k: int) -> bool:
        return all(p.pass_at(k) for p in self.pairs)

    @property
    def pass1(self) -> bool:
        return all(p.pass1 for p in self.pairs)

    @property
    def pass2(self) -> bool:
        return all(p.pass2 for p in self.pairs)

    @property
    def pixel_accuracy(self) -> float:
        return float(np.mean([p.pixel_accuracy for p in self.pairs]))

    def to_dict(self) -> dict:
        votes = []
        for p in self.pairs:
            gs = []
            for rank, g in enumerate(p.groups[:TOP_GROUPS]):
                d = {
                    "count": g.count,
                    "mean_q_halt": round(g.mean_q, 6),
                    "shape": list(g.grid.shape),
                }
                if rank < 2:
                    d["grid"] = g.grid.tolist()
                gs.append(d)
            votes.append(
                {
                    "pass1": p.pass1,
                    "pass2": p.pass2,
                    "hit_rank": p.hit_rank,
                    "pixel_accuracy": p.pixel_accuracy,
                    "n_groups": len(p.groups),
                    "groups": gs,
                }
            )
        return {
            "pass1": float(self.pass1),
            "pass2": float(self.pass2),
            "pixel_accuracy": self.pixel_accuracy,
            "n_test_pairs": len(self.pairs),
            "has_puzzle_id": self.has_puzzle_id,
            "n_aug": self.n_aug,
            "votes": votes,
        }


def score_tasks(dataset, items: list[Item], grids, q_prob) -> list[TaskResult]:
    """Vote per (task, test pair) and score against the bank's targets."""
    by_pair: dict[tuple[int, int], list[int]] = {}
    for i, it in enumerate(items):
        by_pair.setdefault((it.e, it.pair), []).append(i)
    results: dict[int, TaskResult] = {}
    for (e, p), idx in by_pair.items():
        groups = vote([grids[i] for i in idx], [q_prob[i] for i in idx])
        target = dataset.bank.pair(p)[1]
        if e not in results:
            results[e] = TaskResult(
                e, dataset.eval_task_ids[e], bool(dataset.eval_task_puzzle[e] >= 0), [], len(idx)
            )
        results[e].pairs.append(score_pair(groups, target))
    return [results[e] for e in sorted(results)]


def _mean(xs) -> float:
    xs = list(xs)
    return float(np.mean(xs)) if xs else float("nan")


def _part(results: list[TaskResult], pass_k) -> dict:
    pairs = [p for r in results for p in r.pairs]
    return {
        "n_tasks": len(results),
        "n_test_pairs": len(pairs),
        "pass_at": {str(k): _mean(r.pass_at(k) for r in results) for k in pass_k},
        "pixel_accuracy": _mean(p.pixel_accuracy for p in pairs),
    }


def summarise(results: list[TaskResult], pass_k=DEFAULT_PASS_K) -> dict:
    """Overall numbers; ``pass_at`` maps each k to the task pass@k, and ``seen`` / ``unseen``
    give the same for tasks with a learned puzzle id / predicted with the blank id."""
    mean = _mean
    pairs = [p for r in results for p in r.pairs]
    known = [r for r in results if r.has_puzzle_id]
    return {
        "pass_at": {str(k): mean(r.pass_at(k) for r in results) for k in pass_k},
        "seen": _part(known, pass_k),
        "unseen": _part([r for r in results if not r.has_puzzle_id], pass_k),
        "n_tasks": len(results),
        "n_test_pairs": len(pairs),
        "pass1": mean(r.pass1 for r in results),
        "pass2": mean(r.pass2 for r in results),
        "pixel_accuracy": mean(p.pixel_accuracy for p in pairs),
        "pair_pass1": mean(p.pass1 for p in pairs),
        "pair_pass2": mean(p.pass2 for p in pairs),
        "n_tasks_without_puzzle_id": len(results) - len(known),
        "pass1_with_puzzle_id": mean(r.pass1 for r in known),
        "pass2_with_puzzle_id": mean(r.pass2 for r in known),
    }
