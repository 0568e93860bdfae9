"""The held-out score during training (``--eval-every N``), ``RUN/best.pt`` and early stopping.

At every checkpoint whose step is a multiple of ``eval_every`` (and at the last step) the model
(its EMA weights where it keeps them) scores the first ``eval_tasks`` held-out tasks' test pairs
(0: all), voting over ``eval_n_aug`` augmentations, exactly as ``hrm-fast eval --max-tasks M
--n-aug K`` scores that checkpoint (``hrm_fast.evaluate.held_out_scores``). The scores go to
metrics.jsonl as ``{"event": "eval", ...}``, to the trackers and to the report.

The scoring runs just before that checkpoint is written, so the checkpoint carries its own
result in the training state (``trainer.held_out``: the best scores and the evaluations since,
restored by ``--resume``). Once the checkpoint is saved and its probe passed, a better score
(pass@2, ties broken by pixel accuracy) makes it ``RUN/best.pt``, and with ``early_stop`` P the
P-th evaluation in a row without one ends training cleanly (``StopTraining``: exit 0).

Under torchrun every rank predicts its share of the canvases, rank 0 scores and its scores are
broadcast, so every rank keeps the same state and stops at the same checkpoint.

A data set is scored by the function ``scorer_for`` picks for it: (model, dataset, cfg, n_tasks,
n_aug, batch_size, device, quiet, dp) -> a dict with at least ``pass1``, ``pass2`` and
``pixel_accuracy`` on rank 0, None on the other ranks.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from pathlib import Path

import torch

from hrm_fast import checkpoint as ckpt
from hrm_fast.config import RunConfig
from hrm_fast.errors import StopTraining, UserError, WriteFailed
from hrm_fast.files import atomic_link_or_copy, os_reason

Scorer = Callable[..., dict | None]


def scorer_for(dataset) -> Scorer:
    """The held-out scorer of a data set from ``hrm_fast.data.build_dataset``."""
    from hrm_fast.data import ArcDataset

    if isinstance(dataset, ArcDataset):
        from hrm_fast.evaluate import held_out_scores

        return held_out_scores
    from hrm_fast.boards import BoardDataset

    if isinstance(dataset, BoardDataset):
        from hrm_fast.board_eval import held_out_board_scores

        return held_out_board_scores
    raise UserError(f"--eval-every: no held-out scoring for {type(dataset).__name__} runs")


def held_out_count(dataset) -> int:
    """Held-out tasks to score: an ARC data set's eval tasks, or a board set's test boards."""
    if hasattr(dataset, "eval_task_ids"):
        return len(dataset.eval_task_ids)
    return len(dataset.test_inputs)


def _key(scores: dict) -> tuple[float, float]:
    """What "better" means: pass@2, then pixel accuracy (NaN counts as the lowest)."""

    def num(v) -> float:
        v = float(v) if v is not None else math.nan
        return v if math.isfinite(v) else -1.0

    return num(scores.get("pass2")), num(scores.get("pixel_accuracy"))


def improves(scores: dict, best: dict | None) -> bool:
    return best is None or _key(scores) > _key(best)


class HeldOutEval:
    """Scores the held-out tasks at checkpoints, keeps ``RUN/best.pt``, stops early.

    ``before_checkpoint`` is the train loop's before-checkpoint hook (the scoring), the object
    itself its at-checkpoint hook (best.pt, the early stop)."""

    def __init__(self, cfg: RunConfig, trainer, out: Path, log, scorer: Scorer):
        t = cfg.train
        self.every, self.patience, self.last_step = t.eval_every, t.early_stop, t.steps
        self.n_aug = t.eval_n_aug
        total = held_out_count(trainer.dataset)
        self.n_tasks = min(total, t.eval_tasks) if t.eval_tasks else total
        self.trainer, self.out, self.log, self.scorer = trainer, Path(out), log, scorer
        self.best_file = ckpt.best_path(out)
        self.main = trainer.dp is None or trainer.dp.is_main
        self._scored_at: int | None = None  # this run's last scored step
        self._improved = False
        scored_on = {"tasks": self.n_tasks, "n_aug": self.n_aug}
        state = trainer.held_out
        if state is not None and state.get("on") != scored_on:
            was = state.get("on") or {}
            log.note(
                f"held-out evaluation now scores {self.n_tasks} tasks x {self.n_aug} "
                f"augmentations, the checkpoint's best {was.get('tasks')} x {was.get('n_aug')}: "
                "the best score and the patience count start afresh"
            )
            state = None
        if state is None:
            state = {"on": scored_on, "best": None, "since_best": 0, "evals": 0}
        trainer.held_out = state
        best = state["best"]
        resumed_at = ckpt.checkpoint_path(out, trainer.step_count)
        if best and best["step"] == trainer.step_count and self.main and resumed_at.exists():
            self._keep_best(resumed_at)  # a run killed between that save and its best.pt

    @staticmethod
    def check_settings(cfg: RunConfig) -> None:
        """UserError on flags that cannot work together (before any work)."""
        t = cfg.train
        if t.eval_every == 0 and t.early_stop:
            raise UserError(
                f"--early-stop {t.early_stop}: counts held-out evaluations; give --eval-every N too"
            )
        if t.eval_every and t.eval_every % t.checkpoint_every:
            raise UserError(
                f"--eval-every {t.eval_every}: evaluations run at checkpoints; give a multiple "
                f"of --checkpoint-every ({t.checkpoint_every})"
            )

    @classmethod
    def for_run(cls, cfg: RunConfig, trainer, out: Path, log, scorer: Scorer | None = None):
        """The hook pair for this run, or None with ``eval_every`` 0; UserError on settings
        that cannot work. Call after the checkpoint's state is loaded (``--resume``)."""
        t = cfg.train
        cls.check_settings(cfg)
        if t.eval_every == 0:
            return None
        if not held_out_count(trainer.dataset):
            raise UserError(
                f"--eval-every {t.eval_every}: the data has no held-out tasks to score "
                f"(eval_source {cfg.data.eval_source!r})"
            )
        return cls(cfg, trainer, out, log, scorer or scorer_for(trainer.dataset))

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last_step

    def out_of_patience(self) -> str | None:
        """The one-line reason to stop when ``early_stop`` evaluations in a row brought no
        better score; None otherwise."""
        state, step = self.trainer.held_out, self.trainer.step_count
        if not self.patience or state["since_best"] < self.patience:
            return None
        best = state["best"]
        return (
            f"early stop at step {step}: {state['since_best']} held-out evaluation"
            f"{'s' if state['since_best'] > 1 else ''} without a "
            f"better pass@2 or pixel accuracy (--early-stop {self.patience}); the best is step "
            f"{best['step']} (pass@2 {best['pass2']:.3f}, pixel accuracy "
            f"{best['pixel_accuracy']:.3f}), kept as {self.best_file}"
        )

    def stopped_already(self) -> str | None:
        """At the start of a resumed run: the reason to stop at once when its checkpoint had
        run out of patience already (a larger ``--early-stop``, or 0, trains on)."""
        reason = self.out_of_patience()
        if reason is None:
            return None
        return f"{reason}; nothing to train (resume with a larger --early-stop, or 0, to go on)"

    # ------------------------------------------------------------------ the hooks

    def before_checkpoint(self, trainer) -> list[dict] | None:
        step = trainer.step_count
        if not self.due(step):
            return None
        scores = self._score(trainer)
        state = copy.deepcopy(trainer.held_out)
        self._improved = improves(scores, state["best"])
        if self._improved:
            state["best"] = {"step": step} | {
                k: scores.get(k) for k in ("pass1", "pass2", "pixel_accuracy")
            }
            state["since_best"] = 0
        else:
            state["since_best"] += 1
        state["evals"] += 1
        trainer.held_out = state
        self._scored_at = step
        best = state["best"]
        self.log.note(
            f"held-out eval step {step}: pass@1 {scores['pass1']:.3f} pass@2 "
            f"{scores['pass2']:.3f} pixel acc {scores['pixel_accuracy']:.3f} "
            f"({self.n_tasks} tasks, K={scores.get('n_aug', self.n_aug)}) | "
            + ("new best" if self._improved else
               f"best step {best['step']} ({state['since_best']} without improvement)")
        )  # fmt: skip
        record = {"event": "eval", "step": step, **scores}
        record.update(best_step=best["step"], best_pass2=best["pass2"],
                      best_pixel_accuracy=best["pixel_accuracy"],
                      since_best=state["since_best"], improved=self._improved)  # fmt: skip
        return [record]

    def __call__(self, trainer, path: Path) -> None:
        """After the checkpoint of a scored step is saved: best.pt, then the early stop."""
        step = trainer.step_count
        if self._scored_at != step:
            return None
        if self._improved and self.main:
            self._keep_best(path)
        reason = self.out_of_patience()
        if reason is not None and step < self.last_step:
            raise StopTraining(reason)
        return None

    def _keep_best(self, path: Path) -> None:
        try:
            atomic_link_or_copy(path, self.best_file)
        except OSError as e:
            raise WriteFailed(
                f"{self.best_file}: cannot write: {os_reason(e)}; training stopped at step "
                f"{self.trainer.step_count}; the last checkpoint saved is {path}"
            ) from None

    def _score(self, trainer) -> dict:
        """The scorer on the trainer's model (eval mode, EMA weights), RNG untouched."""
        model, dp = trainer.model, trainer.dp
        was_training = model.training
        model.eval()
        devices = [trainer.device] if trainer.device.type == "cuda" else []
        averaged = trainer.ema.applied() if trainer.ema is not None else contextlib.nullcontext()
        try:
            with torch.random.fork_rng(devices=devices), averaged:
                scores = self.scorer(
                    model, trainer.dataset, trainer.cfg, self.n_tasks, self.n_aug,
                    trainer.batch_size, trainer.device, quiet=self.log.quiet, dp=dp,
                )  # fmt: skip
        finally:
            model.train(was_training)
        if dp is not None:  # rank 0 scored: every rank takes its numbers
            scores = dp.broadcast_object(scores)
        return scores
