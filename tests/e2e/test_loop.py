"""The training loop's seams: at-checkpoint hooks, the logged lr, the progress line."""

import json
import sys

import pytest

from hrm_fast.optim import lr_at
from hrm_fast.progress import Progress
from hrm_fast.trainer.loop import Log, LoopOptions, RunWriter, run_loop, watch_for
from hrm_fast.trainer.step import Trainer


def test_hooks_run_at_each_checkpoint_and_their_records_are_logged(debug_cfg, tmp_path):
    debug_cfg.train.steps = 4
    debug_cfg.train.log_every = 1
    trainer = Trainer(debug_cfg)
    log = Log(quiet=True)
    writer = RunWriter.open(debug_cfg, tmp_path, trainer, None, log)
    seen = []

    def held_out(tr, path):
        seen.append((tr.step_count, path.name, path.exists()))
        return [{"event": "held_out", "step": tr.step_count}]

    options = LoopOptions(steps=4, log_every=1, checkpoint_every=2, quiet=True)
    try:
        code = run_loop(trainer, writer, options, log, watch_for(debug_cfg.train), [held_out])
    finally:
        writer.close()
    assert code == 0
    assert seen == [(2, "step_000000002.pt", True), (4, "step_000000004.pt", True)]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "held_out"] == [2, 4]
    t = debug_cfg.train
    for r in (r for r in records if r["event"] == "train"):  # the lr the step ran with
        want = lr_at(r["step"] - 1, t.lr, t.warmup_steps, t.steps, t.lr_min_ratio)
        assert r["lr"] == pytest.approx(want, rel=1e-12)


def test_progress_close_ends_a_redrawn_line_once(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    progress = Progress(10, 0)
    progress.close()  # nothing drawn yet: nothing to end
    progress.update(3, "loss 1.0")
    progress.close()
    progress.close()
    err = capsys.readouterr().err
    assert err.startswith("\r3/10 |") and "loss 1.0" in err
    assert err.endswith("\n") and err.count("\n") == 1


def test_open_ended_progress_counts_steps_and_its_eta_is_the_budget(monkeypatch):
    """adapt --time-budget without --steps: no made-up total, the ETA is the time left."""
    import time

    progress = Progress(None, 0, quiet=True, deadline=time.perf_counter() + 120)
    monkeypatch.setattr(progress, "t0", progress.t0 - 2.0)  # 2 s in
    line = progress.update(4)
    assert line.startswith("4 | ")
    assert line.split("ETA ")[1] in ("1:58", "1:59", "2:00"), line  # what is left of 2 minutes
    assert Progress(None, 0, quiet=True).update(1).endswith("ETA --:--")  # no budget, no total
