"""Test-time adaptation: ``hrm-fast adapt CKPT --source TASKS --out DIR``.

HRM and TRM know a task only through its learned puzzle-embedding rows; a task never trained on
gets the blank id. ``adapt`` gives new tasks rows of their own: it appends one block of puzzle
ids to the checkpoint's table (one per augmentation of each new task, as training lays them
out; ``hrm_fast.puzzle_rows``) and trains on the new tasks' demonstration pairs only, with the
same on-device augmentation. Their test inputs are never labels (a challenges file without
solutions is the normal input; known test outputs are only compared for overlap).

Initial rows (``--init``): ``mean`` (the default) starts every new row at the mean of the
trained rows. The network has only ever seen trained rows, and the blank row 0 is not one of
them: it is never sampled in training, so it stays at its zero initialisation, a point the
network met in no batch. The mean sits inside the cloud of embeddings the network learned to
read, the neutral "average task", and sign-SGD moves every coordinate by the same small step,
so a start near the rows it has to reach costs fewer steps. ``blank`` starts from row 0.

``--mode embeddings`` freezes the network (no gradients, no optimiser state): only the new rows
train, by the sparse sign-SGD of training. ``--mode full`` trains the network too, continuing
the checkpoint's optimiser (and EMA) state. A checkpoint averaged by EMA is adapted in
embeddings mode with the averaged weights (the ones ``eval`` and ``predict`` use).

The run is the trainer's (``hrm_fast.trainer``): the same loop, checkpoints, probe, progress,
metrics.jsonl, ``--resume`` and torchrun. The output checkpoints keep the base checkpoint's
config (block 0 is still described by it) and list the new block in
``payload["dataset"]["puzzle_blocks"]``, so ``predict`` and ``eval`` find the new rows by task
id; ``payload["adapt"]`` and ``DIR/adapt.json`` record how the run was made.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hrm_fast import checkpoint as ckpt
from hrm_fast.config import RunConfig
from hrm_fast.errors import EXIT_PROBE_FAILED, UserError
from hrm_fast.files import write_output
from hrm_fast.overlap import check_overlap, refuse_overlap
from hrm_fast.puzzle_rows import PuzzleBlock, checkpoint_blocks
from hrm_fast.trainer.loop import (
    Log,
    LoopOptions,
    RunWriter,
    log_resumed,
    log_start,
    open_run_dir,
    probe_before_training,
    run_loop,
    under_run_lock,
    watch_for,
    with_ranks,
)
from hrm_fast.trainer.state import load_state
from hrm_fast.trainer.step import Trainer

MODES = ("embeddings", "full")
INITS = ("mean", "blank")
TABLE_KEY = "inner.puzzle_emb.weights"
ADAPT_FILE = "adapt.json"
# A time budget alone bounds the run: the step count is then only a ceiling.
UNBOUNDED_STEPS = 999_999_999


@dataclass
class AdaptOptions:
    source: str
    mode: str = "embeddings"
    steps: int | None = None
    time_budget: float | None = None  # minutes of stepping (this invocation)
    n_aug: int | None = None  # augmentations per new task; None: the checkpoint's data.n_aug
    init: str = "mean"
    lr: float | None = None  # network lr (full mode); None: the checkpoint's
    puzzle_emb_lr: float | None = None  # None: the checkpoint's
    checkpoint_every: int | None = None
    log_every: int | None = None
    allow_overlap: bool = False
    device: str = "auto"

    def check(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"--mode must be embeddings or full, got {self.mode!r}")
        if self.init not in INITS:
            raise UserError(f"--init must be mean or blank, got {self.init!r}")
        if self.steps is None and self.time_budget is None:
            raise UserError("adapt: give --steps N or --time-budget MINUTES (or both)")
        if self.steps is not None and not 1 <= self.steps <= UNBOUNDED_STEPS:
            raise UserError(f"--steps must be between 1 and {UNBOUNDED_STEPS}, got {self.steps}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise UserError(f"--time-budget must be > 0 minutes, got {self.time_budget}")
        for flag, v in (("--n-aug", self.n_aug), ("--checkpoint-every", self.checkpoint_every),
                        ("--log-every", self.log_every)):  # fmt: skip
            if v is not None and v < 1:
                raise UserError(f"{flag} must be >= 1, got {v}")
        for flag, v in (("--lr", self.lr), ("--puzzle-emb-lr", self.puzzle_emb_lr)):
            if v is not None and not v >= 0:
                raise UserError(f"{flag} must be >= 0, got {v}")


@dataclass
class Base:
    """The trained checkpoint being adapted."""

    path: Path
    payload: dict
    cfg: RunConfig

    @property
    def table(self) -> torch.Tensor:
        return self.payload["model"][TABLE_KEY]


def load_base(checkpoint) -> Base:
    payload = ckpt.load(checkpoint)
    cfg = RunConfig.from_dict(payload["config"])
    path = Path(payload["path"])
    table = payload["model"].get(TABLE_KEY)
    if cfg.model.puzzle_emb_ndim <= 0 or table is None or table.ndim != 2:
        raise UserError(f"{path}: the model has no puzzle-embedding table to adapt")
    from hrm_fast.data import dataset_kind

    if dataset_kind(cfg.data) != "arc":
        raise UserError(f"{path}: adapt is for ARC checkpoints (this one trained on boards)")
    if payload.get("adapt") is not None:
        raise UserError(
            f"{path}: already an adapted checkpoint; adapt the checkpoint it came from "
            f"({payload['adapt'].get('base')}) on all the new tasks at once"
        )
    checkpoint_blocks(payload, cfg)  # a malformed block list fails here, in one line
    return Base(path, payload, cfg)


def initial_rows(table: torch.Tensor, n: int, rule: str) -> torch.Tensor:
    """``n`` new rows: the mean of the trained rows 1.. (``mean``; row 0 where there are none)
    or copies of the blank row 0 (``blank``)."""
    if rule == "mean" and table.shape[0] > 1:
        row = table[1:].float().mean(0)
    else:
        row = table[0].float()
    return row.to(table.dtype).expand(n, -1).clone()


def adapt_config(base: Base, opts: AdaptOptions) -> RunConfig:
    """The run's config: the base's (its data section still describes block 0), with the
    adaptation's run length, rates and device."""
    cfg = copy.deepcopy(base.cfg)
    t = cfg.train
    t.epochs = 0
    t.steps = opts.steps if opts.steps is not None else UNBOUNDED_STEPS
    t.warmup_steps = 0  # the network is trained already; full mode continues its optimiser
    t.checkpoint_every = opts.checkpoint_every or (opts.steps or t.checkpoint_every)
    t.log_every = opts.log_every or min(t.log_every, t.checkpoint_every)
    if opts.lr is not None:
        t.lr = opts.lr
    if opts.puzzle_emb_lr is not None:
        t.puzzle_emb_lr = opts.puzzle_emb_lr
    t.device = opts.device
    t.compile, t.cuda_graphs = "false", False  # adaptation runs are short: no compile or capture
    if opts.mode == "embeddings":
        t.ema = False  # the frozen network already holds the weights eval uses
    cfg.data.allow_overlap = opts.allow_overlap
    return cfg


def adapt_dataset(base: Base, opts: AdaptOptions, tasks, pool_seed: int):
    """The new tasks' demonstrations as puzzle tasks of a block starting after the table."""
    from hrm_fast.data import ArcDataset

    data = copy.deepcopy(base.cfg.data)
    data.source = opts.source
    data.n_aug = opts.n_aug or base.cfg.data.n_aug
    trainable = [(t.id, t.train_pairs) for t in tasks]
    held_out = [(t.id, t.test_pairs, i) for i, t in enumerate(tasks)]
    first_id = int(base.table.shape[0])
    return ArcDataset.from_split(data, pool_seed, trainable, held_out, first_id=first_id)


def adapt_record(base: Base, opts: AdaptOptions, block: PuzzleBlock) -> dict:
    """What makes this adaptation this one: a resumed run must match it."""
    return {
        "base": str(base.path),
        "base_step": int(base.payload.get("step", 0)),
        "source": str(opts.source),
        "mode": opts.mode,
        "init": opts.init,
        "block": block.to_dict(),
    }


def check_overlap_with_training(base: Base, tasks, allowed: bool, log: Log) -> None:
    """Scored test pairs (the new tasks' tests with known outputs) against what the model
    trains on: the new demonstrations and the base's training pairs (rebuilt from its config
    where its data can be found)."""
    from hrm_fast.data import ArcDataset, DataError

    trained = [(t.id, t.train_pairs) for t in tasks]
    try:
        ds = ArcDataset.build(base.cfg.data, base.cfg.train.seed)
    except (DataError, UserError, OSError) as e:
        log.note(f"overlap with {base.path}'s training data not checked (cannot load it: {e})")
    else:
        for tid, start, count in zip(ds.task_ids, ds.pair_start, ds.pair_count, strict=True):
            trained.append((tid, [ds.bank.pair(int(p)) for p in range(start, start + count)]))
    scored = [(t.id, [p for p in t.test_pairs if p[1] is not None]) for t in tasks]
    refuse_overlap(check_overlap(trained, scored), allowed, log.note)


def adapt(checkpoint, opts: AdaptOptions, out, resume: bool = False, quiet: bool = False) -> int:
    """Adapt a checkpoint to new tasks; returns the exit code (0, 3 when the probe fails).
    Bad input is a UserError (exit 2) before any work."""
    opts.check()
    from hrm_fast.arc_files import load_tasks

    base = load_base(checkpoint)
    cfg = adapt_config(base, opts)
    tasks = load_tasks(opts.source, "evaluation", cfg.data.canvas, need_outputs=False)
    if not tasks:
        raise UserError(f"--source {opts.source}: no tasks")
    return with_ranks(
        cfg.train,
        lambda dp: under_run_lock(
            out,
            resume,
            dp,
            lambda: _adapt(
                base, opts, cfg, tasks, out, resume, quiet or dp is not None and not dp.is_main, dp
            ),
        ),  # fmt: skip
    )


def _adapt(base: Base, opts, cfg: RunConfig, tasks, out_dir, resume, quiet, dp) -> int:
    log = Log(quiet)
    blocks = checkpoint_blocks(base.payload, base.cfg)
    pool_seed = base.cfg.train.seed + len(blocks)  # a pool of its own per appended block
    dataset = adapt_dataset(base, opts, tasks, pool_seed)
    block = PuzzleBlock(
        [t.id for t in tasks], dataset.first_id, dataset.n_aug, pool_seed,
        cfg.data.puzzle_id_per,
    )  # fmt: skip
    record = adapt_record(base, opts, block)
    check_overlap_with_training(base, tasks, opts.allow_overlap, log)

    out, payload = open_run_dir(cfg, out_dir, resume, log)
    if payload is not None:
        _check_same_adaptation(payload, record)
    trainer = Trainer(cfg, dp=dp, dataset=dataset, train_network=opts.mode == "full")
    base_dataset = base.payload.get("dataset") or {}
    trainer.dataset_record = {
        **base_dataset,
        "num_puzzle_ids": dataset.num_puzzle_ids,
        "puzzle_blocks": list(base_dataset.get("puzzle_blocks") or []) + [block.to_dict()],
    }
    trainer.payload_extra = {"adapt": record}
    log_start(cfg, trainer, log)
    log.note(
        f"adapt {opts.mode}: {len(tasks)} new tasks x {dataset.n_aug} augmentations = puzzle "
        f"ids {dataset.first_id}..{dataset.num_puzzle_ids - 1}, "
        f"{dataset.num_train_pairs} demonstration pairs; new rows start at the "
        f"{'mean of the trained rows' if opts.init == 'mean' else 'blank row'}"
    )
    if payload is not None:
        load_state(trainer, payload)
    else:
        _start_from_base(trainer, base, opts)
    last_saved = (trainer.step_count, payload["path"]) if payload is not None else None
    writer = RunWriter.open(cfg, out, trainer, last_saved, log)
    try:
        if writer.main:
            write_output(
                out / ADAPT_FILE, json.dumps({**record, "options": asdict(opts)}, indent=1)
            )
        watch = watch_for(cfg.train)
        if payload is not None:
            log_resumed(trainer, payload, log)
        elif not probe_before_training(trainer, writer, watch, log):
            return EXIT_PROBE_FAILED
        budget = None if opts.time_budget is None else opts.time_budget * 60.0
        options = LoopOptions.from_config(cfg.train, quiet)
        options.time_budget_s = budget
        options.open_ended = opts.steps is None  # the budget alone ends it
        return run_loop(trainer, writer, options, log, watch)
    finally:
        writer.close()


def _check_same_adaptation(payload: dict, record: dict) -> None:
    saved = payload.get("adapt")
    if saved is None:
        raise UserError(f"{payload['path']}: not an adapt run; give a new --out")
    for key in ("base_step", "source", "mode", "init", "block"):
        if saved.get(key) != record[key]:
            raise UserError(
                f"{payload['path']}: this adapt run has {key} = {saved.get(key)!r}, now "
                f"{record[key]!r}; a resumed run keeps its checkpoint, tasks, mode, --init and "
                "--n-aug (start a new --out to change them)"
            )


@torch.no_grad()
def _start_from_base(trainer: Trainer, base: Base, opts: AdaptOptions) -> None:
    """The base's weights (EMA-averaged ones in embeddings mode), its table with the new rows
    appended, and in full mode its optimiser and EMA state."""
    from hrm_fast.ema import load_ema_weights

    state = dict(base.payload["model"])
    table = base.table
    n_new = trainer.dataset.num_puzzle_ids - table.shape[0]
    state[TABLE_KEY] = torch.cat([table, initial_rows(table, n_new, opts.init)])
    where = str(base.path)
    try:
        trainer.model.load_state_dict(state, strict=False)
        ema = base.payload.get("ema")
        if opts.mode == "embeddings" and ema is not None:
            load_ema_weights(trainer.model, ema)
        if opts.mode == "full":
            if trainer.ema is not None and ema is not None:
                trainer.ema.load_state_dict(ema)
            elif trainer.ema is not None:  # start the average at the base's weights
                for shadow, p in zip(trainer.ema.shadow, trainer.ema.params, strict=True):
                    shadow.copy_(p)
            opt = base.payload.get("optimizer")
            if opt is not None and opt.get("state") and trainer.opt is not None:
                trainer.opt.load_state_dict(opt)
    except (RuntimeError, ValueError, KeyError) as e:
        msg = " ".join(str(e).split())[:160]
        raise UserError(
            f"{where}: its weights do not load into the adapted model ({msg})"
        ) from None
