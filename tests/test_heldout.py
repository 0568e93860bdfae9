"""The held-out score during training (--eval-every): eval records, RUN/best.pt (which eval and
predict accept), the early stop, and --resume carrying the best score and the patience count."""

import json

import pytest
import torch
from conftest import logged_losses

from hrm_fast import checkpoint as ckpt
from hrm_fast.cli import main as cli_main
from hrm_fast.errors import UserError
from hrm_fast.trainer import heldout
from hrm_fast.trainer.loop import train


def records(run, event="eval"):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def fixed_scores(monkeypatch, seq):
    """Every held-out evaluation from now on returns the next (pass@2, pixel accuracy)."""
    calls = iter(seq)

    def score(model, dataset, cfg, n_tasks, n_aug, batch_size, device, quiet=True, dp=None):
        pass2, pixel = next(calls)
        return {"pass1": 0.0, "pass2": pass2, "pixel_accuracy": pixel, "n_tasks": n_tasks}

    monkeypatch.setattr(heldout, "scorer_for", lambda dataset: score)


def test_eval_records_and_best_pt_scores_as_eval_does(debug_cfg, tiny_tasks, tmp_path):
    t = debug_cfg.train
    t.steps, t.checkpoint_every, t.eval_every, t.eval_tasks, t.eval_n_aug = 4, 2, 2, 2, 2
    run = tmp_path / "run"
    assert train(debug_cfg, run, quiet=True) == 0
    evals = records(run)
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert r["n_tasks"] == 2 and r["n_aug"] == 2
        assert 0 <= r["pass1"] <= r["pass2"] <= 1 and 0 <= r["pixel_accuracy"] <= 1
    best_step = evals[-1]["best_step"]
    best = ckpt.load(run / "best.pt")  # weights-only, like every checkpoint
    assert best["step"] == best_step and best["held_out"]["best"]["step"] == best_step
    # `hrm-fast eval RUN/best.pt` gives the numbers logged for that step.
    out = tmp_path / "ev"
    args = ["eval", str(run / "best.pt"), "--max-tasks", "2", "--n-aug", "2", "--out", str(out)]
    assert cli_main([*args, "--batch-size", str(t.batch_size), "--render", "0"]) == 0
    overall = json.loads((out / "eval.json").read_text())["overall"]
    logged = next(r for r in evals if r["step"] == best_step)
    for k in ("pass1", "pass2", "pixel_accuracy", "pair_pass1", "n_test_pairs"):
        assert overall[k] == pytest.approx(logged[k], abs=1e-9), k
    pred = tmp_path / "pred"
    best_pt = str(run / "best.pt")
    assert cli_main(["predict", best_pt, "--source", str(tiny_tasks), "--out", str(pred),
                     "--n-aug", "1", "--render", "0"]) == 0  # fmt: skip
    assert (pred / "submission.json").exists()


def test_early_stop_after_patience_keeps_best_through_pruning(debug_cfg, tmp_path, monkeypatch,
                                                               capsys):  # fmt: skip
    t = debug_cfg.train
    t.steps, t.checkpoint_every, t.eval_every, t.early_stop, t.keep_checkpoints = 20, 1, 1, 2, 1
    # step 1 best; step 2 better by pixel accuracy alone; 3 ties; 4 is worse: stop at 4.
    fixed_scores(monkeypatch, [(0.0, 0.2), (0.0, 0.3), (0.0, 0.3), (0.0, 0.1)])
    run = tmp_path / "run"
    assert train(debug_cfg, run) == 0
    err = capsys.readouterr().err
    assert "early stop at step 4: 2 held-out evaluations" in err and "best is step 2" in err
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_000000004.pt"]
    assert ckpt.load(run / "best.pt")["step"] == 2  # its step file was pruned
    evals = records(run)
    assert [(r["step"], r["improved"], r["since_best"]) for r in evals] == [
        (1, True, 0), (2, True, 0), (3, False, 1), (4, False, 2),
    ]  # fmt: skip
    assert all(r["best_step"] == 2 for r in evals[1:])


def test_resume_continues_best_and_patience(debug_cfg, tmp_path, monkeypatch, capsys):
    t = debug_cfg.train
    t.steps, t.checkpoint_every, t.eval_every, t.early_stop = 8, 1, 1, 3
    t.lr_min_ratio = 1.0  # the lr after warm-up does not depend on --steps
    scores = [(0.0, 0.2), (0.5, 0.1), (0.0, 0.9), (0.5, 0.1), (0.4, 0.1)]  # best 2, stop at 5
    fixed_scores(monkeypatch, scores)
    straight = tmp_path / "straight"
    assert train(debug_cfg, straight, quiet=True) == 0

    split = tmp_path / "split"
    fixed_scores(monkeypatch, scores[:3])
    t.steps = 3
    assert train(debug_cfg, split, quiet=True) == 0
    assert ckpt.load(split)["held_out"]["since_best"] == 1
    fixed_scores(monkeypatch, scores[3:])
    t.steps = 8
    assert train(debug_cfg, split, resume=True, quiet=True) == 0

    a, b = ckpt.load(straight), ckpt.load(split)
    assert a["step"] == b["step"] == 5
    assert a["held_out"] == b["held_out"]
    assert a["held_out"]["best"]["step"] == 2 and a["held_out"]["since_best"] == 3
    assert logged_losses(straight) == logged_losses(split)  # the scoring leaves training as is
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert ckpt.load(split / "best.pt")["step"] == 2

    # Resumed again with the same patience: nothing to train, exit 0, no new checkpoint.
    capsys.readouterr()
    assert train(debug_cfg, split, resume=True) == 0
    assert "nothing to train" in capsys.readouterr().err
    assert ckpt.load(split)["step"] == 5


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"early_stop": 2}, "--early-stop 2: counts held-out evaluations"),
        ({"eval_every": 3, "checkpoint_every": 2}, "multiple of --checkpoint-every (2)"),
    ],
)
def test_settings_that_cannot_work_are_one_line(debug_cfg, tmp_path, changes, needle):
    for k, v in changes.items():
        setattr(debug_cfg.train, k, v)
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        train(debug_cfg, tmp_path / "run", quiet=True)


def test_best_pt_missing_names_the_flag(debug_cfg, tmp_path, capsys):
    debug_cfg.train.steps = 1
    run = tmp_path / "run"
    assert train(debug_cfg, run, quiet=True) == 0
    assert cli_main(["eval", str(run / "best.pt")]) == 2
    assert "--eval-every" in capsys.readouterr().err
