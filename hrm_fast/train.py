"""The trainer: one static training step, and the loop around it.

``Trainer.step()`` is the whole iteration: sample + augment a batch on the device, the ACT carry
update (halted examples are replaced), the model's forward and loss (``model.forward_loss``:
HRM's 1-step gradient and target-Q forward, or TRM's recursion), backward, gradient clipping,
AdamW, the puzzle-embedding sign-SGD and, when on, the weights' EMA. Shapes
are fixed, the carry and the metric sums are updated in place, and nothing in it reads a value
back to the host, so it can be compiled (``--compile``) and captured in a CUDA graph
(``--cuda-graphs``). The loop reads the metric sums only every ``log_every`` steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch

from hrm_fast import checkpoint as ckpt
from hrm_fast.arch import build_model
from hrm_fast.config import RunConfig
from hrm_fast.device import check_device_options, default_dtype, resolve_device
from hrm_fast.distributed import DataParallel, rank_seed
from hrm_fast.early_warning import CollapseWatch
from hrm_fast.ema import EMA
from hrm_fast.errors import UserError
from hrm_fast.files import AppendLog, WriteFailed, os_reason, prepare_dir, write_output
from hrm_fast.layers import Carry, count_parameters
from hrm_fast.optim import AdamATan2
from hrm_fast.trackers import Trackers, open_trackers

EXIT_PROBE_FAILED = 3


# --------------------------------------------------------------------------- runtime choices


def resolve_runtime(cfg: RunConfig) -> tuple[torch.device, str, torch.dtype]:
    t = cfg.train
    device = resolve_device(t.device)
    backend = t.backend
    if backend == "auto":
        backend = "fused" if device.type == "cuda" else "reference"
    if backend not in ("reference", "fused"):
        raise UserError(f"--backend: expected auto, reference or fused, got {backend!r}")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if t.dtype == "auto":
        dtype = default_dtype(device)
    elif t.dtype in dtypes:
        dtype = dtypes[t.dtype]
    else:
        raise UserError(f"--dtype: expected auto, fp32, bf16 or fp16, got {t.dtype!r}")
    check_device_options(device, backend, dtype, t.cuda_graphs)
    if t.cuda_graphs and device.type != "cuda":
        raise UserError("--cuda-graphs needs a CUDA device")
    return device, backend, dtype


def lr_at(step: int, base: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio * base`` (HRM's schedule)."""
    if step < warmup:
        return base * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return base * (
        min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    )


def probe_stop_hint(out: Path, saved: bool) -> str:
    """What a user whose run the probe stopped can do next."""
    look = (
        f"look with `hrm-fast probe {out}` and `hrm-fast report {out}`"
        if saved
        else "this is before any training, so look at the data and the model flags"
    )
    return (
        "hrm-fast: the model's predictions barely depend on its input (docs/safeguards.md); "
        f"{look}; the thresholds are --probe-min-tv and --probe-min-differ"
    )


def steps_for_epochs(epochs: int, num_train_pairs: int, batch_size: int) -> int:
    """TRM's and HRM's run length: pretrain.py sets total_steps = int(epochs * total_groups *
    mean_puzzle_examples / global_batch_size), where an epoch visits every task (group) once
    and takes all the trainable pairs of one of its augmentations. With every task's pool the
    same size, total_groups * mean_puzzle_examples is the number of trainable pairs."""
    steps = epochs * num_train_pairs // batch_size
    if not 1 <= steps <= 999_999_999:
        raise UserError(
            f"--epochs {epochs}: {epochs} x {num_train_pairs} trainable pairs / batch "
            f"{batch_size} = {steps} steps, outside 1..999999999"
        )
    return steps


class SparseSignSGD:
    """HRM's sign-SGD with decoupled weight decay for the puzzle embeddings, static shapes.

    The batch's rows sit in ``local_weights`` (a leaf). Gradients of rows that share a puzzle id
    are summed with a [B, B] match matrix instead of ``unique`` (which syncs the host); rows with
    the same id then write identical values, so the scatter is deterministic.
    """

    def __init__(self, emb, weight_decay: float, device, gather=None):
        self.emb, self.weight_decay = emb, weight_decay
        self.lr = torch.zeros((), device=device)  # filled from the host each step
        # Data parallel: (ids, grad) -> every rank's (ids, grad), so all ranks update alike.
        self.gather = gather

    @torch.no_grad()
    def step(self) -> None:
        grad = self.emb.local_weights.grad
        if grad is None:
            return
        ids = self.emb.local_ids
        if self.gather is not None:
            ids, grad = self.gather(ids, grad)
        ids = ids.long()
        same = (ids[:, None] == ids[None, :]).to(grad.dtype)
        g = same @ grad
        w = self.emb.weights[ids]
        w = w * (1.0 - self.lr * self.weight_decay) - self.lr * torch.sign(g)
        self.emb.weights.index_copy_(0, ids, w)

    def zero_grad(self) -> None:
        if self.emb.local_weights.grad is not None:
            self.emb.local_weights.grad.zero_()


METRIC_KEYS = (
    "loss", "lm_loss", "q_halt_loss", "q_continue_loss", "diversity", "distribution", "halt",
    "accuracy", "exact_accuracy", "unique_classes", "label_classes", "q_halt_accuracy",
)  # fmt: skip


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        out_dir: str | Path | None = None,
        quiet: bool = False,
        dp: DataParallel | None = None,
    ):
        from hrm_fast.data import ArcDataset, DeviceSampler

        self.cfg = cfg
        self.out = Path(out_dir) if out_dir is not None else None
        self.quiet = quiet
        self.device, self.backend, self.dtype = resolve_runtime(cfg)
        # Data parallel (torchrun, world > 1): this rank's device and share of the global batch.
        self.dp = dp
        self.batch_size = cfg.train.batch_size
        if dp is not None:
            self.device, self.batch_size = dp.device, dp.local_batch(cfg.train.batch_size)
            if cfg.train.cuda_graphs and dp.backend != "nccl":
                raise UserError("--cuda-graphs with several ranks needs --dist-backend nccl")
        torch.manual_seed(cfg.train.seed)
        self.dataset = ArcDataset.build(cfg.data, seed=cfg.train.seed)
        if cfg.train.epochs > 0:  # the run length follows the data actually loaded
            cfg.train.steps = steps_for_epochs(
                cfg.train.epochs, self.dataset.num_train_pairs, cfg.train.batch_size
            )
        self.sampler = DeviceSampler(self.dataset, self.device, self.backend)
        self.model = build_model(
            cfg.model,
            seq_len=cfg.seq_len,
            num_puzzle_ids=self.dataset.num_puzzle_ids,
            batch_size=self.batch_size,
            backend=self.backend,
            forward_dtype=self.dtype,
        ).to(self.device)
        self.model.train()
        if self.backend == "fused":
            from hrm_fast.loss import arc_loss_fused as loss_fn
        else:
            from hrm_fast.loss import arc_loss_ref as loss_fn
        if dp is not None:  # the batch-level penalties see every rank's examples
            loss_fn = functools.partial(loss_fn, batch_gather=dp.gather_batch)
        self.loss_fn = loss_fn

        t = cfg.train
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if dp is not None:
            dp.share_gradient_buffer(self.params)
            # The weights are made (the same on every rank); sampling differs by rank from here.
            torch.manual_seed(rank_seed(t.seed, dp.rank))
        use_graphs = t.cuda_graphs
        self.lr = torch.tensor(t.lr, device=self.device) if use_graphs else t.lr
        opt_kwargs = dict(lr=self.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
        if t.optimizer == "adam_atan2":  # its step counters always live on the device
            self.opt = AdamATan2(self.params, **opt_kwargs)
        elif t.optimizer == "adamw":
            if self.device.type == "cuda":
                opt_kwargs.update(fused=True, capturable=use_graphs)
            self.opt = torch.optim.AdamW(self.params, **opt_kwargs)
        else:
            raise UserError(f"--optimizer: expected adamw or adam_atan2, got {t.optimizer!r}")
        self.sparse = (
            SparseSignSGD(
                self.model.inner.puzzle_emb,
                t.puzzle_emb_weight_decay,
                self.device,
                gather=None if dp is None else dp.gather_rows,
            )
            if cfg.model.puzzle_emb_ndim > 0
            else None
        )
        self.ema = EMA(self.model, t.ema_rate) if t.ema else None

        # Static state: the ACT carry and the metric sums live in fixed buffers.
        example = self.sampler.sample(self.batch_size)
        self.carry: Carry = self.model.initial_carry(example)
        names = METRIC_KEYS + ("halted", "halted_steps", "grad_norm")
        self.sums = {k: torch.zeros((), device=self.device) for k in names}
        self.n_in_sums = 0
        self.step_count = 0

        fl = self._forward_loss
        if t.compile:
            fl = torch.compile(fl, dynamic=False)
        self._forward_loss_fn = fl
        self._graph = None

    # ------------------------------------------------------------------ the static step

    def _forward_loss(self, carry: Carry):
        batch = self.sampler.sample(self.batch_size)
        return self.model.forward_loss(carry, batch, self.loss_fn, self.cfg.loss)

    def _step_body(self) -> None:
        new_carry, loss, metrics = self._forward_loss_fn(self.carry)
        loss.backward()
        if self.dp is not None:
            self.dp.average_gradients()  # one all-reduce of the flat gradient buffer
        # foreach=None: the foreach kernels where the device has them (CUDA, CPU); MPS has none
        # and foreach=True would raise there.
        max_norm = self.cfg.train.grad_clip or math.inf  # inf: the norm only, for the log
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=None)
        self.opt.step()
        if self.sparse is not None:
            self.sparse.step()
            self.sparse.zero_grad()
        self.opt.zero_grad(set_to_none=False)
        if self.ema is not None:
            self.ema.update()
        with torch.no_grad():
            for dst, src in zip(
                self.carry.tensors().values(), new_carry.tensors().values(), strict=True
            ):
                dst.copy_(src)
            for k in METRIC_KEYS:
                self.sums[k].add_(metrics[k].detach().float())
            halted = new_carry.halted
            self.sums["halted"].add_(halted.sum())
            self.sums["halted_steps"].add_((new_carry.steps * halted).sum())
            self.sums["grad_norm"].add_(gnorm.detach().float())

    def _set_lr(self, step: int) -> None:
        t = self.cfg.train
        lr = lr_at(step, t.lr, t.warmup_steps, t.steps, t.lr_min_ratio)
        if isinstance(self.lr, torch.Tensor):
            self.lr.fill_(lr)
        else:
            for g in self.opt.param_groups:
                g["lr"] = lr
        if self.sparse is not None:
            s = lr_at(step, t.puzzle_emb_lr, t.warmup_steps, t.steps, t.lr_min_ratio)
            self.sparse.lr.fill_(s)

    def _state_tensors(self) -> list[torch.Tensor]:
        """Every tensor the step mutates, so warm-up and capture can be undone in place."""
        ts = list(self.carry.tensors().values()) + list(self.sums.values())
        ts += list(self.model.state_dict(keep_vars=True).values())
        if self.ema is not None:
            ts += self.ema.shadow
        for st in self.opt.state.values():
            ts += [v for v in st.values() if isinstance(v, torch.Tensor)]
        return ts

    def _capture(self) -> None:
        """Capture the whole step in one CUDA graph (after warm-up on a side stream).

        Warm-up and capture run the step for real, so every mutated tensor is snapshotted
        first and restored in place afterwards: the first replay is the real next step.
        """
        tensors = self._state_tensors()
        snapshot = [t.detach().clone() for t in tensors]
        # Replays read the generator's host-side offset, so rewinding it makes the first
        # replay draw the same batch and exploration numbers as the eager step would.
        rng = torch.cuda.get_rng_state(self.device)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                self._step_body()
        torch.cuda.current_stream().wait_stream(s)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._step_body()
        # The optimiser state created in warm-up (step 0 had none) goes back to zero.
        fresh = self._state_tensors()
        with torch.no_grad():
            for t, v in zip(tensors, snapshot, strict=True):
                t.copy_(v)
            for t in fresh[len(tensors) :]:
                t.zero_()
        torch.cuda.set_rng_state(rng, self.device)

    def step(self) -> None:
        """One training iteration (no host sync)."""
        self._set_lr(self.step_count)
        if self.cfg.train.cuda_graphs:
            if self._graph is None:
                self._capture()
            self._graph.replay()
        else:
            self._step_body()
        self.step_count += 1
        self.n_in_sums += 1

    def read_metrics(self) -> dict[str, float]:
        """Average the device-side sums since the last read (the one host sync)."""
        sums = self.sums if self.dp is None else self.dp.average_metrics(self.sums)
        vals = {k: v.item() for k, v in sums.items()}
        n = max(1, self.n_in_sums)
        out = {k: vals[k] / n for k in METRIC_KEYS}
        out["grad_norm"] = vals["grad_norm"] / n
        out["act_steps"] = vals["halted_steps"] / vals["halted"] if vals["halted"] else float("nan")
        for v in self.sums.values():
            v.zero_()
        self.n_in_sums = 0
        return out

    # ------------------------------------------------------------------ state

    @property
    def world_size(self) -> int:
        return 1 if self.dp is None else self.dp.world

    def state(self) -> dict | None:
        """The checkpoint payload. With several ranks, each rank's carry and RNG state are
        gathered to rank 0 (a collective: every rank calls this); other ranks get None."""
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        carry = {k: v.detach().cpu() for k, v in self.carry.tensors().items()}
        extra = {}
        if self.dp is not None:
            carries = self.dp.gather_tensors(carry)
            rngs = self.dp.gather_tensors(rng)
            if not self.dp.is_main:
                return None
            # The global batch's carry (rank r holds rows [r*b, (r+1)*b)); every rank's RNG.
            carry = {k: torch.cat([c[k] for c in carries]) for k in carry}
            extra = {"rank_rng": rngs}
        return {
            "version": ckpt.VERSION,
            "step": self.step_count,
            "config": self.cfg.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "sparse": None,  # its state is the table itself, inside "model"
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "carry": carry,
            "rng": rng,
            "world_size": self.world_size,
            **extra,
            "dataset": {
                "num_puzzle_ids": self.dataset.num_puzzle_ids,
                "task_ids": list(self.dataset.task_ids),
            },
        }

    def load_state(self, payload: dict) -> None:
        """Restore a checkpoint. One written by ``convert`` holds weights only (no optimiser,
        carry or RNG state): those start fresh, as at step 0. The ACT carry and RNG state are
        restored when the checkpoint was written by as many ranks as run now; otherwise the
        carries restart (every example fetches a fresh one) and each rank's RNG is seeded by
        (seed, rank, step)."""
        where = payload.get("path", "checkpoint")
        rank = 0 if self.dp is None else self.dp.rank
        try:
            self.model.load_state_dict(payload["model"], strict=False)
            if payload.get("optimizer") is not None:
                self.opt.load_state_dict(payload["optimizer"])
            if self.ema is not None:  # a checkpoint without one (convert) starts it afresh
                if payload.get("ema") is not None:
                    self.ema.load_state_dict(payload["ema"])
                else:
                    self.ema = EMA(self.model, self.cfg.train.ema_rate)
            carry, rng = payload.get("carry"), payload.get("rng") or {}
            if int(payload.get("world_size", 1)) != self.world_size:
                carry, rng = None, {}
                torch.manual_seed(rank_seed(self.cfg.train.seed, rank, int(payload["step"])))
            elif self.dp is not None:
                rng = payload["rank_rng"][rank]
            if carry is not None:
                rows = slice(rank * self.batch_size, (rank + 1) * self.batch_size)
                for k, v in self.carry.tensors().items():
                    v.copy_(carry[k][rows].to(self.device))
            if "cpu" in rng:
                torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            msg = " ".join(str(e).split())[:160]
            raise UserError(f"{where}: does not fit this run's model or data ({msg})") from None
        self.step_count = int(payload["step"])

    def save_checkpoint(self) -> Path:
        """Write this step's checkpoint atomically (OSError on failure, older ones intact)."""
        path = ckpt.checkpoint_path(self.out, self.step_count)
        state = self.state()
        if state is not None:  # rank 0 writes (every rank of a single process)
            ckpt.atomic_save(state, path)
        return path

    def save(self) -> Path:
        path = self.save_checkpoint()
        if self.dp is None or self.dp.is_main:
            ckpt.prune(self.out, self.cfg.train.keep_checkpoints)
        return path

    def checked_probe(self):
        """(report, passed): the probe on rank 0 (report None elsewhere), its verdict on all."""
        if self.dp is None:
            report = self.probe()
            return report, report.passed
        report = self.probe() if self.dp.is_main else None
        return report, self.dp.broadcast_flag(report is not None and report.passed)

    def probe(self, source=None):
        """The input-sensitivity probe on the (EMA) model; pairs from ``source`` (default: the
        training sampler)."""
        from hrm_fast.probe import run_probe

        t = self.cfg.train
        was_training = self.model.training
        self.model.eval()
        # The probe draws its own inputs; fork the RNG so training (and resume) never sees it.
        devices = [self.device] if self.device.type == "cuda" else []
        averaged = self.ema.applied() if self.ema is not None else contextlib.nullcontext()
        try:
            with torch.random.fork_rng(devices=devices), averaged:
                torch.manual_seed(t.seed + self.step_count)
                report = run_probe(
                    self.model, self.sampler if source is None else source, t.probe_pairs,
                    t.probe_min_differ, t.probe_min_tv, self.device, generator_seed=t.seed,
                )  # fmt: skip
        finally:
            self.model.train(was_training)
        report.step = self.step_count
        return report


# --------------------------------------------------------------------------- the loop


class Progress:
    """One status line with rate and ETA: redrawn in place on a terminal, logged otherwise."""

    def __init__(self, total: int, start: int, quiet: bool = False, unit: str = "it"):
        self.total, self.start, self.quiet, self.unit = total, start, quiet, unit
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, done: int, extra: str = "") -> str:
        dt = time.perf_counter() - self.t0
        rate = (done - self.start) / dt if dt > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        line = f"{done}/{self.total} | {rate:.2f} {self.unit}/s | ETA {fmt_time(eta)}"
        if extra:
            line += " | " + extra
        if not self.quiet:
            if self.tty:
                print("\r" + line.ljust(118), end="", file=sys.stderr, flush=True)
            else:
                print(line, file=sys.stderr, flush=True)
        return line

    def close(self) -> None:
        if self.tty and not self.quiet:
            print(file=sys.stderr, flush=True)


def fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "--:--"
    s = int(s)
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


# What a resumed run must keep: it shapes the model and the carry, or fixes what each puzzle id
# means (the tasks, their augmentation pool and its seed). Everything else may change.
RESUME_FIXED = {
    "model": None,  # every field
    "data": ("source", "eval_source", "n_aug", "include_eval_demos", "max_tasks", "puzzle_id_per",
             "canvas"),
    "train": ("batch_size", "seed", "optimizer"),
}  # fmt: skip


def check_resume_config(cfg: RunConfig, payload: dict) -> None:
    """UserError naming the first fixed field where ``cfg`` and the checkpoint's config differ.

    A checkpoint from ``convert`` (no optimiser state) fixes only the model.
    """
    saved = RunConfig.from_dict(payload["config"])
    only_model = payload.get("optimizer") is None
    for section, names in RESUME_FIXED.items():
        if only_model and section != "model":
            continue
        old_sub, new_sub = getattr(saved, section), getattr(cfg, section)
        for f in dataclasses.fields(old_sub):
            old, new = getattr(old_sub, f.name), getattr(new_sub, f.name)
            what = f"{section}.{f.name}"
            if f.name == "expansion":  # many ratios round to one SwiGLU width: compare widths
                old, new = old_sub.intermediate_size, new_sub.intermediate_size
                what = "SwiGLU width (from model.expansion)"
            if (names is None or f.name in names) and old != new:
                flag = "--" + f.name.replace("_", "-")
                raise UserError(
                    f"{flag} {getattr(new_sub, f.name)}: the checkpoint {payload.get('path')} "
                    f"was trained with {what} = {old!r}; a resumed run keeps its model, data, "
                    "batch size, seed and optimizer (start a new --out to change it)"
                )


def _check_resume_data(trainer: Trainer, payload: dict) -> None:
    saved = payload.get("dataset", {}).get("task_ids")
    if saved is None or payload.get("optimizer") is None:
        return
    now = list(trainer.dataset.task_ids)
    if list(saved) != now:
        i = next((i for i, (a, b) in enumerate(zip(saved, now, strict=False)) if a != b),
                 min(len(saved), len(now)))  # fmt: skip
        raise UserError(
            f"{payload.get('path')}: trained on {len(saved)} puzzle tasks, the data now gives "
            f"{len(now)} (first difference at index {i}); has --source changed?"
        )


def _end_cut_line(path: Path) -> None:
    """A run killed mid-write leaves a last line with no newline: end it, so the resumed run's
    first record starts on a line of its own."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, quiet: bool = False) -> int:
    """Run training; returns the process exit code (0, 3 when the probe fails).

    Bad input raises UserError (exit 2) before any work; a write that fails mid-run (disk full,
    I/O error) stops training with WriteFailed (exit 4) naming the last saved checkpoint.

    Under torchrun with several processes every rank runs this; rank 0 alone writes
    metrics.jsonl, the progress line and the checkpoints.
    """
    from hrm_fast import distributed

    t = cfg.train
    dp = distributed.setup(t.device, t.dist_backend, t.dist_timeout)  # None: a single process
    if dp is None:
        return _train(cfg, out_dir, resume, quiet, None)
    try:
        code = _train(cfg, out_dir, resume, quiet or not dp.is_main, dp)
    except Exception as e:
        dp.close(wait_for_all=False)
        if not distributed.is_comm_error(e):
            raise
        raise distributed.PeerLost(
            f"rank {dp.rank}: lost contact with another rank ({str(e).splitlines()[0][:160]}); "
            "the last checkpoint is intact, continue with --resume"
        ) from None
    dp.close()
    return code


def _train(cfg: RunConfig, out_dir, resume: bool, quiet: bool, dp: DataParallel | None) -> int:
    main = dp is None or dp.is_main
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if resume and not Path(out_dir).is_dir():
        raise UserError(f"--out {out_dir}: no such run directory to resume")
    out = prepare_dir(out_dir, "--out")
    payload = None
    if resume:
        payload = ckpt.load_latest(out, on_skip=lambda msg: log(f"hrm-fast: {msg}"))
        if payload is None:
            raise UserError(f"{out}: --resume given but the directory has no checkpoints")
        check_resume_config(cfg, payload)
    if not resume and ckpt.list_checkpoints(out):
        raise UserError(f"{out}: already holds checkpoints; pass --resume or choose a new --out")

    trainer = Trainer(cfg, out, quiet=quiet, dp=dp)
    if payload is not None:
        _check_resume_data(trainer, payload)
    counts = count_parameters(trainer.model)
    ranks = "" if dp is None else f" | {dp.world} ranks ({dp.backend}) x batch {trainer.batch_size}"
    log(
        f"hrm-fast: {trainer.device.type} backend={trainer.backend} dtype={str(trainer.dtype)[6:]}"
        f" | {counts['network'] / 1e6:.2f}M network params"
        f" + {counts['puzzle_embedding'] / 1e6:.2f}M"
        f" puzzle-embedding table | {trainer.dataset.num_puzzle_ids} puzzle ids{ranks}"
    )
    if cfg.train.epochs > 0:
        log(
            f"hrm-fast: {cfg.train.epochs} epochs x {trainer.dataset.num_train_pairs} trainable "
            f"pairs / batch {cfg.train.batch_size} = {cfg.train.steps} steps"
        )
    if payload is not None:
        trainer.load_state(payload)
    metrics_f = None  # rank 0 writes the run's files (every rank of a single process)
    trackers = Trackers([])
    if main:
        write_output(out / "config.json", cfg.to_json())
        try:
            _end_cut_line(out / "metrics.jsonl")
            metrics_f = AppendLog(out / "metrics.jsonl")
        except OSError as e:
            raise UserError(f"{out / 'metrics.jsonl'}: cannot write: {os_reason(e)}") from None
        try:  # trackers live where metrics.jsonl is written: one process writes both
            trackers = open_trackers(cfg, out, trainer, start_step=trainer.step_count, log=log)
        except BaseException:
            metrics_f.close()
            raise
    last_saved = (trainer.step_count, payload["path"]) if payload is not None else None
    w = cfg.train
    watch = CollapseWatch(w.warn_unique_below, w.warn_intervals, w.warn_probe_shrink)
    progress: Progress | None = None  # created when the loop starts

    def fail(msg: str) -> WriteFailed:
        if progress is not None:
            progress.close()  # the message goes on its own line
        return WriteFailed(f"{msg}; {stopped()}")

    def stopped() -> str:
        where = f"training stopped at step {trainer.step_count}"
        if last_saved is None:
            return f"{where}; no checkpoint was saved"
        return f"{where}; the last checkpoint saved is step {last_saved[0]} ({last_saved[1]})"

    def emit(record: dict) -> None:
        if metrics_f is None:
            return
        try:
            metrics_f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise fail(f"{metrics_f.path}: cannot write: {os_reason(e)}") from None
        trackers.record(record)

    def save() -> Path:
        nonlocal last_saved
        path = ckpt.checkpoint_path(out, trainer.step_count)
        try:
            trainer.save_checkpoint()
        except OSError as e:
            raise fail(f"{path}: cannot write: {os_reason(e)}") from None
        last_saved = (trainer.step_count, path)
        try:
            if main:
                ckpt.prune(out, cfg.train.keep_checkpoints)
        except OSError as e:
            old = e.filename or ckpt.checkpoint_dir(out)
            raise fail(f"{old}: cannot remove an old checkpoint: {os_reason(e)}") from None
        return path

    if payload is not None:
        log(f"hrm-fast: resumed from {payload['path']} at step {trainer.step_count}")
        saved_world = int(payload.get("world_size", 1))
        if saved_world != trainer.world_size:
            log(
                f"hrm-fast: the checkpoint was written by {saved_world} rank(s), this run has "
                f"{trainer.world_size}: weights, optimiser, puzzle table and step carry over; "
                "the ACT carries restart and each rank's RNG is reseeded by (seed, rank, step)"
            )
    else:
        report, passed = trainer.checked_probe()
        if report is not None:
            emit({"event": "probe", **report.to_dict()})
            watch.on_probe(report)  # the baseline headroom
            log(f"hrm-fast: {report.summary()}")
        if not passed:
            log("hrm-fast: input-sensitivity probe FAILED before step 1; training stopped")
            log(probe_stop_hint(out, saved=False))
            if metrics_f is not None:
                metrics_f.close()
            trackers.close()
            return EXIT_PROBE_FAILED

    interrupted = {"flag": False}

    def on_signal(signum, frame):
        if interrupted["flag"]:  # second Ctrl-C: stop now (the last checkpoint is intact)
            raise KeyboardInterrupt
        interrupted["flag"] = True

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t = cfg.train
    progress = Progress(t.steps, trainer.step_count, quiet)
    code = 0
    stop = False
    tick = (time.perf_counter(), trainer.step_count)  # it/s leaves out checkpoints and probes
    try:
        while trainer.step_count < t.steps and not stop:
            trainer.step()
            step = trainer.step_count
            logged = step % t.log_every == 0 or step == t.steps
            if logged:
                m = trainer.read_metrics()
                m["lr"] = lr_at(step - 1, t.lr, t.warmup_steps, t.steps, t.lr_min_ratio)
                now = time.perf_counter()
                m["it_s"] = (step - tick[1]) / max(now - tick[0], 1e-9)
                tick = (now, step)
                emit({"event": "train", "step": step, **m})
                warning = watch.on_log(step, m["unique_classes"])
                if warning is not None:
                    emit(warning)
                progress.update(
                    step,
                    f"loss {m['loss']:.4f} acc {m['accuracy']:.3f} exact {m['exact_accuracy']:.3f}"
                    f" uniq {m['unique_classes']:.1f}/{m['label_classes']:.1f}"
                    f" act {m['act_steps']:.2f}"
                    + (f" | WARNING: {warning['message']}" if warning else ""),
                )
                if not math.isfinite(m["loss"]):
                    progress.close()
                    path = save()
                    raise UserError(f"loss became {m['loss']} at step {step}; saved {path}")
            if step % t.checkpoint_every == 0 or step == t.steps:
                path = save()
                report, passed = trainer.checked_probe()
                if report is not None:
                    emit({"event": "probe", **report.to_dict(), "checkpoint": str(path)})
                    progress.close()
                    log(f"hrm-fast: checkpoint {path.name} | {report.summary()}")
                    warning = watch.on_probe(report)
                    if warning is not None:
                        emit(warning)
                        log(f"hrm-fast: WARNING at step {step}: {warning['message']}")
                if not passed:
                    log(
                        f"hrm-fast: input-sensitivity probe FAILED at step {step}; training stopped"
                    )
                    log(probe_stop_hint(out, saved=True))
                    code = EXIT_PROBE_FAILED
                    break
                tick = (time.perf_counter(), step)
            # One process stops at once; ranks agree at log intervals, so they stop at one step.
            stop = interrupted["flag"] if dp is None else logged and dp.any(interrupted["flag"])
        if stop or (dp is None and interrupted["flag"]):
            progress.close()
            path = save()
            log(f"hrm-fast: interrupted at step {trainer.step_count}; saved {path}")
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if metrics_f is not None:
            metrics_f.close()
        trackers.close()
    progress.close()
    return code
