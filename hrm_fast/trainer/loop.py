"""``hrm-fast train``: the loop around the static step, and what a run writes as it goes.

``train()`` opens (or resumes) the run directory, builds the Trainer, probes the fresh model and
hands over to ``run_loop``, which steps, logs every ``log_every`` steps, and at every checkpoint
saves, probes and calls the ``at_checkpoint`` hooks. ``run_loop`` knows nothing of how the
Trainer was built: another command (fine-tuning a checkpoint, say) builds its own Trainer and
RunWriter and runs the same loop with its own LoopOptions.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hrm_fast import checkpoint as ckpt
from hrm_fast.config import RunConfig, TrainConfig
from hrm_fast.distributed import DataParallel
from hrm_fast.early_warning import CollapseWatch
from hrm_fast.errors import (
    EXIT_OK,
    EXIT_PROBE_FAILED,
    PeerLost,
    StopTraining,
    UserError,
    WriteFailed,
)
from hrm_fast.files import AppendLog, os_reason, prepare_dir, write_output
from hrm_fast.layers import count_parameters
from hrm_fast.overlap import dataset_overlap, refuse_overlap
from hrm_fast.probe import checked_probe, probe_stop_hint
from hrm_fast.progress import Progress
from hrm_fast.run_lock import run_lock
from hrm_fast.trackers import Trackers, open_trackers
from hrm_fast.trainer.heldout import HeldOutEval
from hrm_fast.trainer.state import (
    check_resume_config,
    check_resume_data,
    load_state,
    save_checkpoint,
)
from hrm_fast.trainer.step import Trainer

# Called after each checkpoint is saved and probed: (trainer, checkpoint path) -> records for
# metrics.jsonl (say, a held-out evaluation's scores), or None. It may end the run cleanly by
# raising StopTraining (under torchrun, on every rank at the same checkpoint).
CheckpointHook = Callable[[Trainer, Path], list[dict] | None]
# Called just before each checkpoint is written: trainer -> records, or None. What it changes in
# the trainer's state (``trainer.held_out``) goes into that checkpoint.
BeforeCheckpointHook = Callable[[Trainer], list[dict] | None]


class Log:
    """Messages on stderr, or nothing when quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __call__(self, *parts) -> None:
        if not self.quiet:
            print(*parts, file=sys.stderr, flush=True)

    def note(self, msg: str) -> None:
        self(f"hrm-fast: {msg}")


@dataclass
class LoopOptions:
    """Where the loop stops and how often it logs and saves (steps count from the run's start)."""

    steps: int
    log_every: int
    checkpoint_every: int
    quiet: bool = False
    # Seconds of stepping from the loop's start; when they run out it stops with a checkpoint,
    # as on a stop signal. None: no limit.
    time_budget_s: float | None = None
    # No step count was asked for (the time budget ends the run): progress shows steps done.
    open_ended: bool = False

    @classmethod
    def from_config(cls, t: TrainConfig, quiet: bool = False) -> LoopOptions:
        return cls(t.steps, t.log_every, t.checkpoint_every, quiet)


class StopSignal:
    """SIGINT/SIGTERM while the loop runs: the first asks it to stop and save; a second stops at
    once (KeyboardInterrupt; the last checkpoint is intact). ``with`` restores the old handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopSignal:
        self._previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}


class RunWriter:
    """What a run leaves in its directory: metrics.jsonl and the trackers (rank 0), checkpoints
    and their pruning (every rank takes part, rank 0 writes), and which checkpoint was saved last,
    for the message when a write fails mid-run (WriteFailed, exit 4)."""

    def __init__(
        self,
        out: Path,
        trainer: Trainer,
        keep_checkpoints: int,
        metrics: AppendLog | None = None,
        trackers: Trackers | None = None,
        last_saved: tuple[int, str | Path] | None = None,
    ):
        self.out, self.trainer, self.keep_checkpoints = out, trainer, keep_checkpoints
        self.metrics = metrics  # None: this rank writes no files
        self.trackers = trackers if trackers is not None else Trackers([])
        self.last_saved = last_saved
        self.main = trainer.dp is None or trainer.dp.is_main

    @classmethod
    def open(cls, cfg: RunConfig, out: Path, trainer: Trainer, last_saved, log) -> RunWriter:
        """config.json, metrics.jsonl (appended to) and the trackers, on rank 0 only."""
        keep = cfg.train.keep_checkpoints
        if not (trainer.dp is None or trainer.dp.is_main):
            return cls(out, trainer, keep, last_saved=last_saved)
        write_output(out / "config.json", cfg.to_json())
        try:
            _end_cut_line(out / "metrics.jsonl")
            metrics = AppendLog(out / "metrics.jsonl")
        except OSError as e:
            raise UserError(f"{out / 'metrics.jsonl'}: cannot write: {os_reason(e)}") from None
        try:  # trackers live where metrics.jsonl is written: one process writes both
            trackers = open_trackers(cfg, out, trainer, start_step=trainer.step_count, log=log)
        except BaseException:
            metrics.close()
            raise
        return cls(out, trainer, keep, metrics, trackers, last_saved)

    def stopped(self) -> str:
        where = f"training stopped at step {self.trainer.step_count}"
        if self.last_saved is None:
            return f"{where}; no checkpoint was saved"
        step, path = self.last_saved
        return f"{where}; the last checkpoint saved is step {step} ({path})"

    def failed(self, msg: str) -> WriteFailed:
        return WriteFailed(f"{msg}; {self.stopped()}")

    def emit(self, record: dict) -> None:
        """One line of metrics.jsonl, and the same record to the trackers."""
        if self.metrics is None:
            return
        try:
            self.metrics.write(json.dumps(record) + "\n")
        except OSError as e:
            raise self.failed(f"{self.metrics.path}: cannot write: {os_reason(e)}") from None
        self.trackers.record(record)

    def save(self) -> Path:
        """This step's checkpoint, then the oldest ones beyond ``keep_checkpoints`` go."""
        path = ckpt.checkpoint_path(self.out, self.trainer.step_count)
        try:
            save_checkpoint(self.trainer, self.out)
        except OSError as e:
            raise self.failed(f"{path}: cannot write: {os_reason(e)}") from None
        self.last_saved = (self.trainer.step_count, path)
        try:
            if self.main:
                ckpt.prune(self.out, self.keep_checkpoints)
        except OSError as e:
            old = e.filename or ckpt.checkpoint_dir(self.out)
            raise self.failed(f"{old}: cannot remove an old checkpoint: {os_reason(e)}") from None
        return path

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        self.trackers.close()


def _end_cut_line(path: Path) -> None:
    """A run killed mid-write leaves a last line with no newline: end it, so the resumed run's
    first record starts on a line of its own."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")


def watch_for(t: TrainConfig) -> CollapseWatch:
    return CollapseWatch(t.warn_unique_below, t.warn_intervals, t.warn_probe_shrink)


def probe_before_training(trainer: Trainer, writer: RunWriter, watch: CollapseWatch, log) -> bool:
    """The probe on the fresh model (the collapse watch's baseline); False: it failed."""
    report, passed = checked_probe(trainer.probe, trainer.dp)
    if report is not None:
        writer.emit({"event": "probe", **report.to_dict()})
        watch.on_probe(report)  # the baseline headroom
        log.note(report.summary())
    if not passed:
        log.note("input-sensitivity probe FAILED before step 1; training stopped")
        log(probe_stop_hint(writer.out, saved=False))
    return passed


def run_loop(
    trainer: Trainer,
    writer: RunWriter,
    options: LoopOptions,
    log: Log,
    watch: CollapseWatch,
    at_checkpoint: Sequence[CheckpointHook] = (),
    before_checkpoint: Sequence[BeforeCheckpointHook] = (),
) -> int:
    """Step to ``options.steps``; returns the exit code (0, or 3 when a checkpoint's probe
    fails). A stop signal, or a hook's StopTraining, saves a checkpoint and returns 0."""
    dp: DataParallel | None = trainer.dp
    deadline = None
    if options.time_budget_s is not None:
        deadline = time.perf_counter() + options.time_budget_s
    total = None if options.open_ended else options.steps
    progress = Progress(total, trainer.step_count, options.quiet, deadline=deadline)
    code = EXIT_OK
    stop = out_of_time = False
    tick = (time.perf_counter(), trainer.step_count)  # it/s leaves out checkpoints and probes
    with StopSignal() as signalled:
        try:
            while trainer.step_count < options.steps and not stop:
                trainer.step()
                step = trainer.step_count
                logged = step % options.log_every == 0 or step == options.steps
                if logged:
                    m = trainer.read_metrics()
                    m["lr"] = trainer.last_lr
                    now = time.perf_counter()
                    m["it_s"] = (step - tick[1]) / max(now - tick[0], 1e-9)
                    tick = (now, step)
                    writer.emit({"event": "train", "step": step, **m})
                    warning = watch.on_log(step, m["unique_classes"])
                    if warning is not None:
                        writer.emit(warning)
                    progress.update(step, _progress_text(m, warning, trainer.runtime))
                    if not math.isfinite(m["loss"]):
                        progress.close()
                        path = writer.save()
                        raise UserError(f"loss became {m['loss']} at step {step}; saved {path}")
                if step % options.checkpoint_every == 0 or step == options.steps:
                    if before_checkpoint:
                        progress.close()  # a hook's own messages start on a line of their own
                    for before in before_checkpoint:
                        for record in before(trainer) or ():
                            writer.emit(record)
                    path = writer.save()
                    if not _probe_at_checkpoint(trainer, writer, watch, log, progress, path):
                        code = EXIT_PROBE_FAILED
                        break
                    try:
                        for hook in at_checkpoint:
                            for record in hook(trainer, path) or ():
                                writer.emit(record)
                    except StopTraining as e:
                        progress.close()
                        log.note(str(e))
                        break
                    tick = (time.perf_counter(), step)
                # One process stops at once; ranks agree at log intervals, so they stop at one step.
                late = deadline is not None and time.perf_counter() >= deadline
                wants = signalled.requested or late
                stop = wants if dp is None else logged and dp.any(wants)
                # Another rank's signal also stops this one: only a passed deadline is "time".
                out_of_time = stop and late and not signalled.requested
            if stop or (dp is None and signalled.requested):
                progress.close()
                path = writer.save()
                why = "time budget reached" if out_of_time else "interrupted"
                log.note(f"{why} at step {trainer.step_count}; saved {path}")
        finally:
            progress.close()  # a failed write's message goes on its own line
    return code


def _progress_text(m: dict, warning: dict | None, runtime=None) -> str:
    tag = runtime.progress_tag() if runtime is not None else None
    return (
        f"loss {m['loss']:.4f} acc {m['accuracy']:.3f} exact {m['exact_accuracy']:.3f}"
        f" uniq {m['unique_classes']:.1f}/{m['label_classes']:.1f}"
        f" act {m['act_steps']:.2f}"
        + (f" | {tag}" if tag else "")
        + (f" | WARNING: {warning['message']}" if warning else "")
    )


def _probe_at_checkpoint(trainer, writer, watch, log, progress, path: Path) -> bool:
    """The probe of the checkpoint just saved, logged and watched; False: it failed."""
    step = trainer.step_count
    report, passed = checked_probe(trainer.probe, trainer.dp)
    if report is not None:
        writer.emit({"event": "probe", **report.to_dict(), "checkpoint": str(path)})
        progress.close()
        log.note(f"checkpoint {path.name} | {report.summary()}")
        warning = watch.on_probe(report)
        if warning is not None:
            writer.emit(warning)
            log.note(f"WARNING at step {step}: {warning['message']}")
    if not passed:
        log.note(f"input-sensitivity probe FAILED at step {step}; training stopped")
        log(probe_stop_hint(writer.out, saved=True))
    return passed


# --------------------------------------------------------------------------- hrm-fast train


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    quiet: bool = False,
    force_selfcheck: bool = False,
) -> int:
    """Run training; returns the process exit code (0, 3 when the probe fails).

    Bad input raises UserError (exit 2) before any work; a write that fails mid-run (disk full,
    I/O error) stops training with WriteFailed (exit 4) naming the last saved checkpoint.

    Under torchrun with several processes every rank runs this; rank 0 alone writes
    metrics.jsonl, the progress line and the checkpoints.
    """
    return with_ranks(
        cfg.train,
        lambda dp: _train(cfg, out_dir, resume, quiet or not _main(dp), dp, force_selfcheck),
    )


def _main(dp: DataParallel | None) -> bool:
    return dp is None or dp.is_main


def with_ranks(t: TrainConfig, body: Callable[[DataParallel | None], int]) -> int:
    """``body(dp)`` in this process's place among torchrun's ranks (``dp`` None in a single
    process); a rank that loses its peers ends with PeerLost (continue with --resume)."""
    from hrm_fast import distributed

    dp = distributed.setup(t.device, t.dist_backend, t.dist_timeout)  # None: a single process
    if dp is None:
        return body(None)
    try:
        code = body(dp)
    except Exception as e:
        dp.close(wait_for_all=False)
        if not distributed.is_comm_error(e):
            raise
        raise PeerLost(
            f"rank {dp.rank}: lost contact with another rank ({str(e).splitlines()[0][:160]}); "
            "the last checkpoint is intact, continue with --resume"
        ) from None
    dp.close()
    return code


def open_run_dir(cfg: RunConfig, out_dir, resume: bool, log: Log) -> tuple[Path, dict | None]:
    """The run directory, and with --resume its newest checkpoint that loads."""
    if resume and not Path(out_dir).is_dir():
        raise UserError(f"--out {out_dir}: no such run directory to resume")
    out = prepare_dir(out_dir, "--out")
    payload = None
    if resume:
        payload = ckpt.load_latest(out, on_skip=log.note)
        if payload is None:
            raise UserError(f"{out}: --resume given but the directory has no checkpoints")
        check_resume_config(cfg, payload)
    if not resume and ckpt.list_checkpoints(out):
        raise UserError(f"{out}: already holds checkpoints; pass --resume or choose a new --out")
    return out, payload


def log_start(cfg: RunConfig, trainer: Trainer, log: Log) -> None:
    counts = count_parameters(trainer.model)
    dp = trainer.dp
    if trainer.runtime.note is not None:
        log.note(trainer.runtime.note)
    ranks = "" if dp is None else f" | {dp.world} ranks ({dp.backend}) x batch {trainer.batch_size}"
    log.note(
        f"{trainer.device.type} backend={trainer.backend}"
        + (" attention=sdpa" if trainer.runtime.attention == "sdpa" else "")
        + f" dtype={str(trainer.dtype)[6:]}"
        + f" compile={'on' if trainer.compiled else 'off'} ({trainer.compile_reason})"
        f" | {counts['network'] / 1e6:.2f}M network params"
        f" + {counts['puzzle_embedding'] / 1e6:.2f}M"
        f" puzzle-embedding table | {trainer.dataset.num_puzzle_ids} puzzle ids{ranks}"
    )
    if trainer.device.type == "cpu":
        log.note(f"attention: {trainer.cpu_attention} | matmul: {trainer.cpu_matmul}")
    if cfg.train.epochs > 0:
        log.note(
            f"{cfg.train.epochs} epochs x {trainer.dataset.num_train_pairs} trainable "
            f"pairs / batch {cfg.train.batch_size} = {cfg.train.steps} steps"
        )


def log_resumed(trainer: Trainer, payload: dict, log: Log) -> None:
    log.note(f"resumed from {payload['path']} at step {trainer.step_count}")
    saved_world = int(payload.get("world_size", 1))
    if saved_world != trainer.world_size:
        log.note(
            f"the checkpoint was written by {saved_world} rank(s), this run has "
            f"{trainer.world_size}: weights, optimiser, puzzle table and step carry over; "
            "the ACT carries restart and each rank's RNG is reseeded by (seed, rank, step)"
        )


def under_run_lock(out_dir, resume: bool, dp: DataParallel | None, body: Callable[[], int]) -> int:
    """``body()`` holding the run directory's lock (rank 0 writes, so rank 0 holds it): one
    writer per directory for every command that writes a run (train, adapt)."""
    if dp is not None and not dp.is_main:
        return body()
    if resume and not Path(out_dir).is_dir():
        raise UserError(f"--out {out_dir}: no such run directory to resume")
    with run_lock(prepare_dir(out_dir, "--out")):
        return body()


def _train(
    cfg: RunConfig, out_dir, resume: bool, quiet: bool, dp: DataParallel | None, force_selfcheck
) -> int:
    return under_run_lock(
        out_dir,
        resume,
        dp,
        lambda: _train_locked(cfg, out_dir, resume, quiet, dp, force_selfcheck),
    )


def _train_locked(cfg: RunConfig, out_dir, resume: bool, quiet: bool, dp, force_selfcheck) -> int:
    log = Log(quiet)
    HeldOutEval.check_settings(cfg)
    out, payload = open_run_dir(cfg, out_dir, resume, log)
    trainer = Trainer(cfg, dp=dp, force_selfcheck=force_selfcheck)
    if payload is not None:
        check_resume_data(trainer, payload)
    refuse_overlap(dataset_overlap(trainer.dataset), cfg.data.allow_overlap, log.note)
    log_start(cfg, trainer, log)
    if payload is not None:
        load_state(trainer, payload)
    held_out = HeldOutEval.for_run(cfg, trainer, out, log)  # None: --eval-every 0
    last_saved = (trainer.step_count, payload["path"]) if payload is not None else None
    writer = RunWriter.open(cfg, out, trainer, last_saved, log)
    try:
        if trainer.runtime.note is not None:
            writer.emit(trainer.runtime.record(trainer.step_count))
        watch = watch_for(cfg.train)
        if payload is not None:
            log_resumed(trainer, payload, log)
        elif not probe_before_training(trainer, writer, watch, log):
            return EXIT_PROBE_FAILED
        hooks = ([held_out], [held_out.before_checkpoint]) if held_out is not None else ((), ())
        if held_out is not None and trainer.step_count < cfg.train.steps:
            reason = held_out.stopped_already()
            if reason is not None:  # an early-stopped run resumed with the same patience
                log.note(reason)
                return EXIT_OK
        options = LoopOptions.from_config(cfg.train, quiet)
        return run_loop(trainer, writer, options, log, watch, hooks[0], hooks[1])
    finally:
        writer.close()
