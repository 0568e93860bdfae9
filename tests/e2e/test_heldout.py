"""The held-out score during training (--eval-every): eval records, RUN/best.pt (which eval and
predict accept), the early stop, and --resume carrying the best score and the patience count."""

import json

import pytest
import torch

from hrm_fast import checkpoint as ckpt
from hrm_fast.cli import main as cli_main
from hrm_fast.errors import UserError
from hrm_fast.trainer import heldout
from hrm_fast.trainer.loop import train
from tests.support.training import logged_losses


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
    # Scoring leaves training as it was: the same losses and weights as a run without it.
    plain = tmp_path / "plain"
    t.eval_every = 0
    assert train(debug_cfg, plain, quiet=True) == 0
    assert logged_losses(plain) == logged_losses(run)
    a, b = ckpt.load(run)["model"], ckpt.load(plain)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
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


def test_resume_relinks_a_best_pt_the_killed_run_did_not_write(debug_cfg, tmp_path,
                                                                monkeypatch):  # fmt: skip
    t = debug_cfg.train
    t.steps, t.checkpoint_every, t.eval_every = 2, 1, 1
    fixed_scores(monkeypatch, [(0.0, 0.1), (0.0, 0.2)])
    run = tmp_path / "run"
    assert train(debug_cfg, run, quiet=True) == 0
    (run / "best.pt").unlink()  # killed after step 2's checkpoint, before its best.pt
    t.steps = 3
    fixed_scores(monkeypatch, [(0.0, 0.0)])
    assert train(debug_cfg, run, resume=True, quiet=True) == 0
    assert ckpt.load(run / "best.pt")["step"] == 2


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


def test_report_draws_the_held_out_scores_and_best(tmp_path):
    from hrm_fast.dashboard import build_figure, load_run
    from hrm_fast.presets import from_name

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(from_name("debug").to_json())
    lines = [{"event": "train", "step": s, "loss": 3.0 - s / 10} for s in range(1, 7)]
    best = {2: 2, 4: 4, 6: 4}
    for s, (p2, px) in zip((2, 4, 6), ((0.0, 0.2), (0.5, 0.4), (0.5, 0.3)), strict=True):
        lines.append({"event": "eval", "step": s, "pass1": 0.0, "pass2": p2, "pixel_accuracy": px,
                      "pair_pass1": 0.0, "pair_pass2": p2, "n_tasks": 2, "n_test_pairs": 2,
                      "n_aug": 2, "best_step": best[s], "best_pass2": p2,
                      "best_pixel_accuracy": px, "since_best": int(s == 6),
                      "improved": s != 6})  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    data = load_run(run)
    assert [e["step"] for e in data.evals] == [2, 4, 6]
    assert not any("ignored" in n for n in data.notes)  # the report knows every eval key
    ax = build_figure([data]).axes[11]
    assert "during training" in ax.get_title()
    curves = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(curves["pass@2"].get_xdata()) == [2, 4, 6]
    assert list(curves["pixel acc."].get_ydata()) == [0.2, 0.4, 0.3]
    assert list(curves["best.pt"].get_xdata()) == [4] and list(curves["best.pt"].get_ydata()) == [
        0.5
    ]


def test_trackers_get_eval_scalars():
    from hrm_fast.trackers import Trackers

    got = []

    class Fake:
        def scalars(self, step, values):
            got.append((step, values))

        def image(self, step, tag, rgb):
            raise AssertionError("no picture for an eval record")

        def close(self):
            pass

    Trackers([Fake()]).record({"event": "eval", "step": 4, "pass2": 0.5, "improved": True,
                               "pixel_accuracy": 0.25})  # fmt: skip
    assert got == [(4, {"eval/pass2": 0.5, "eval/pixel_accuracy": 0.25})]


def test_two_ranks_score_together_and_stop_at_one_checkpoint(tiny_tasks, tmp_path):
    """torchrun, gloo, 2 ranks: lr 0 keeps the weights, so the second evaluation cannot
    improve and --early-stop 1 ends both ranks there; the scores are one process's eval."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    run = tmp_path / "run"
    flags = ["--steps", "12", "--checkpoint-every", "2", "--eval-every", "2", "--early-stop", "1",
             "--eval-n-aug", "3", "--lr", "0", "--puzzle-emb-lr", "0"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "hrm_fast", "train", "--preset", "debug", "--source", str(tiny_tasks),
           "--out", str(run), *flags]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "early stop at step 4: 1 held-out evaluation without" in r.stderr
    assert [p.name for p in ckpt.list_checkpoints(run)][-1] == "step_000000004.pt"
    evals = records(run)
    assert [(e["step"], e["improved"]) for e in evals] == [(2, True), (4, False)]
    assert ckpt.load(run / "best.pt")["step"] == 2
    out = tmp_path / "one"
    one = subprocess.run([sys.executable, "-m", "hrm_fast", "eval", str(run / "best.pt"),
                          "--batch-size", "2", "--n-aug", "3", "--render", "0", "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    overall = json.loads((out / "eval.json").read_text())["overall"]
    for k in ("pass1", "pass2", "pixel_accuracy", "n_test_pairs"):
        assert overall[k] == pytest.approx(evals[0][k], abs=1e-9), k
