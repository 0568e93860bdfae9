"""Evaluation: voting and scoring on hand-made predictions, invert-after-augment consistency
through the voting path (a perfect oracle must score pass@1 = 1), and an end-to-end run of
``hrm-fast eval`` on a checkpoint trained for two steps."""

import json

import numpy as np
import pytest
import torch

from hrm_fast.config import DataConfig
from hrm_fast.data import ArcDataset
from hrm_fast.evaluate import build_items, predict
from hrm_fast.scoring import exact, pixel_accuracy, score_pair, score_tasks, summarise, vote
from tests.support.tasks import write_nonsquare_tasks

A = np.array([[1, 2], [3, 4]], np.uint8)
B = np.array([[1, 2], [3, 5]], np.uint8)
C = np.array([[7]], np.uint8)


# --------------------------------------------------------------------------- voting


def test_majority_wins():
    groups = vote([B, A, C, A, A, B], [0.9, 0.1, 0.99, 0.1, 0.1, 0.9])
    assert [g.count for g in groups] == [3, 2, 1]
    assert exact(groups[0].grid, A) and exact(groups[1].grid, B) and exact(groups[2].grid, C)
    assert groups[0].mean_q == pytest.approx(0.1)
    assert groups[1].mean_q == pytest.approx(0.9)


def test_tie_broken_by_mean_q_halt():
    # Two groups of two: B's members are more confident on average (0.6 vs 0.5).
    groups = vote([A, B, A, B], [0.9, 0.7, 0.1, 0.5])
    assert [g.count for g in groups] == [2, 2]
    assert exact(groups[0].grid, B)
    s = score_pair(groups, A)
    assert not s.pass1 and s.pass2


def test_pass2_catches_runner_up_but_not_third():
    groups = vote([A, A, A, B, B, C], [0.5] * 6)
    assert not score_pair(groups, A * 0).pass2  # target nowhere
    s = score_pair(groups, B)
    assert (s.pass1, s.pass2) == (False, True)
    s = score_pair(groups, C)  # third place does not count
    assert (s.pass1, s.pass2) == (False, False)
    s = score_pair(groups, A)
    assert (s.pass1, s.pass2, s.pixel_accuracy) == (True, True, 1.0)


def test_same_cells_different_shape_are_different_groups():
    flat = np.array([[1, 2, 3, 4]], np.uint8)
    groups = vote([A, flat, flat], [0.5, 0.5, 0.5])
    assert [g.grid.shape for g in groups] == [(1, 4), (2, 2)]
    assert not exact(flat, A)


def test_pixel_accuracy_shape_mismatch_counts_overlap_only():
    target = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)  # 2x3, 6 cells
    pred = np.array([[1, 9], [4, 5], [7, 7]], np.uint8)  # 3x2: overlap 2x2, 3 cells agree
    assert pixel_accuracy(pred, target) == pytest.approx(3 / 6)
    assert pixel_accuracy(target, target) == 1.0
    big = np.zeros((5, 5), np.uint8)
    big[:2, :3] = target
    assert pixel_accuracy(big, target) == 1.0  # extra predicted cells are not counted
    assert pixel_accuracy(np.zeros((0, 0), np.uint8), target) == 0.0
    s = score_pair(vote([pred], [0.3]), target)
    assert (s.pass1, s.pass2, s.pixel_accuracy) == (False, False, 0.5)


# --------------------------------------------------------------------------- oracle


class Oracle(torch.nn.Module):
    """Predicts the augmented target canvas exactly (labels with IGNORE read as PAD)."""

    def __init__(self, batch_size, steps):
        super().__init__()
        self.batch_size, self.steps, self.calls = batch_size, steps, 0

    def initial_carry(self, batch):
        return {"step": 0}

    def forward(self, carry, batch):
        assert batch["inputs"].shape[0] == self.batch_size, "batches must be padded"
        assert batch["puzzle_identifiers"].dtype == torch.int32
        self.calls += 1
        tok = torch.where(batch["labels"] < 0, 0, batch["labels"]).long()
        logits = torch.nn.functional.one_hot(tok, 12).float()
        q = torch.zeros(tok.shape[0])
        return {"step": carry["step"] + 1}, {"logits": logits, "q_halt_logits": q}


@pytest.mark.parametrize("held_out", ["own_tests", "blank_ids"])
def test_perfect_oracle_scores_one_through_inversion(tmp_path, held_out):
    src = write_nonsquare_tasks(tmp_path / "train", 3, seed=1)
    eval_source = ""
    if held_out == "blank_ids":  # eval tasks without trainable pairs: blank id, seeded pool
        eval_source = str(write_nonsquare_tasks(tmp_path / "eval", 2, seed=2))
    cfg = DataConfig(source=str(src), eval_source=eval_source, n_aug=8, canvas=8)
    ds = ArcDataset.build(cfg, seed=3)
    items = build_items(ds, n_aug=6, n_tasks=len(ds.eval_task_ids), seed=3)
    assert len(items) == 6 * sum(len(p) for p in ds.eval_pairs)
    assert any(it.dihedral in (1, 3, 6, 7) for it in items)  # a transposing augmentation ran
    assert any(it.colour_map[1] != 1 for it in items)
    if held_out == "blank_ids":
        assert all(it.puzzle_id == 0 for it in items)
    else:
        assert all(it.puzzle_id == ds.puzzle_id(it.e, it.k) for it in items)

    model = Oracle(batch_size=5, steps=2)
    seen = []
    grids, q = predict(model, ds.bank, items, 8, 2, 5, "cpu", progress=seen.append)
    assert model.calls == 2 * -(-len(items) // 5)  # every batch runs every ACT step
    assert seen[-1] == len(items)
    for it, g in zip(items, grids, strict=True):
        assert exact(g, ds.bank.pair(it.pair)[1]), f"item {it} did not invert to its target"
    results = score_tasks(ds, items, grids, q)
    o = summarise(results)
    assert o["pass1"] == o["pass2"] == o["pixel_accuracy"] == 1.0
    assert o["n_tasks_without_puzzle_id"] == (2 if held_out == "blank_ids" else 0)
    for r in results:
        for p in r.pairs:
            assert p.groups[0].count == 6  # all augmentations agree after inversion


# --------------------------------------------------------------------------- end to end


def test_end_to_end_eval(trained_run, capsys):
    from hrm_fast.cli import main

    root, run = trained_run
    # 3 tasks with 1, 2, 1 test pairs x K=3 = 12 canvases in batches of 5 (last one padded).
    rc = main(["eval", str(run), "--n-aug", "3", "--batch-size", "5", "--render", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "pass@1" in out and "pass@2" in out
    report = json.loads((run / "eval.json").read_text())
    assert (run / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    o = report["overall"]
    assert o["n_tasks"] == 3 and o["n_test_pairs"] == 4 and report["n_aug"] == 3
    assert report["step"] == 2 and report["halt_max_steps"] == 3
    for key in ("pass1", "pass2", "pixel_accuracy", "pair_pass1", "pair_pass2"):
        assert 0.0 <= o[key] <= 1.0, key
    assert o["pass1"] <= o["pass2"]
    assert sorted(report["tasks"]) == sorted(p.stem for p in (root / "tasks").glob("*.json"))
    for t in report["tasks"].values():
        assert set(t) >= {"pass1", "pass2", "pixel_accuracy", "n_test_pairs", "has_puzzle_id"}
        assert t["has_puzzle_id"] is True and t["n_aug"] == 3
        assert 0.0 <= t["pixel_accuracy"] <= 1.0 and t["pass1"] in (0.0, 1.0)
        assert len(t["votes"]) == t["n_test_pairs"]
        for v in t["votes"]:
            counts = [g["count"] for g in v["groups"]]
            assert counts == sorted(counts, reverse=True) and sum(counts) <= 3
            assert v["n_groups"] >= len(v["groups"]) >= 1
            top = v["groups"][0]
            assert list(np.array(top["grid"], np.int64).reshape(top["shape"]).shape) == top["shape"]


def test_eval_rejects_mismatched_tasks(trained_run, tmp_path, capsys):
    from hrm_fast.cli import main

    _, run = trained_run
    # debug trains on eval demonstrations: another eval source changes the puzzle tasks.
    other = write_nonsquare_tasks(tmp_path / "other", 2, seed=9)
    rc = main(["eval", str(run), "--eval-source", str(other), "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hrm-fast: ") and "puzzle tasks do not match" in err[-1]
    assert not (tmp_path / "eval.json").exists()
    assert main(["eval", str(run), "--n-aug", "0"]) == 2
    assert main(["eval", str(tmp_path / "missing")]) == 2
