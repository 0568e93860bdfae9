"""Train/test overlap by content: a planted duplicate (same grids, another id) is found, ids
alone never count, and disjoint sets report nothing."""

import numpy as np

from hrm_fast.arc_files import Task
from hrm_fast.overlap import check_overlap, grid_hash


def _tasks(prefix, n, seed):
    rng = np.random.default_rng(seed)

    def grid():
        return rng.integers(0, 10, (int(rng.integers(2, 6)), int(rng.integers(2, 6)))).astype(
            np.uint8
        )

    return [
        Task(f"{prefix}{t}", [(grid(), grid()) for _ in range(3)], [(grid(), grid())])
        for t in range(n)
    ]


def test_disjoint_sets_have_no_overlap():
    report = check_overlap(_tasks("train", 5, 0), _tasks("eval", 4, 1))
    assert not report.any and report.n_overlapping_pairs == 0 and report.task_ids == []
    assert report.n_scored_pairs == 4
    assert "no overlap" in report.summary()


def test_planted_duplicate_found_by_content_not_id():
    train, scored = _tasks("train", 5, 0), _tasks("eval", 4, 1)
    inp, out = train[2].train_pairs[1]
    scored[3].test_pairs[0] = (inp.copy(), out.copy())  # same grids, another task id
    report = check_overlap(train, scored)
    assert report.n_overlapping_pairs == 1 and report.task_ids == ["eval3"]
    assert report.trained_task_ids == {"eval3": ["train2"]}
    line = report.summary()
    assert "\n" not in line and "1 of 4" in line and "eval3" in line
    assert report.to_dict()["task_ids"] == ["eval3"]


def test_same_id_different_grids_is_not_overlap_and_both_grids_must_match():
    train = _tasks("x", 3, 0)
    scored = _tasks("x", 3, 2)  # the same ids, other grids
    assert not check_overlap(train, scored).any
    inp, out = train[0].train_pairs[0]
    scored[0].test_pairs[0] = (inp, (out + 1) % 10)  # same input, another output
    assert not check_overlap(train, scored).any
    # the same cells in another shape are another grid
    flat = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert grid_hash(flat) != grid_hash(flat.reshape(3, 2))


def test_named_pairs_and_unknown_outputs():
    a = (np.ones((2, 2), np.uint8), np.zeros((1, 1), np.uint8))
    report = check_overlap([("t", [a])], [("s", [a]), ("u", [a])])
    assert report.n_overlapping_pairs == 2 and report.task_ids == ["s", "u"]
    # a test pair whose output is unknown (a task to predict) is not scored
    unknown = Task("p", [a], [(a[0], None)])
    assert check_overlap([("t", [a])], [unknown]).n_scored_pairs == 0
