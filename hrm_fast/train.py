"""The trainer: one static training step, and the loop around it.

``Trainer.step()`` is the whole iteration: sample + augment a batch on the device, the ACT carry
update (halted examples are replaced), the forward with HRM's 1-step gradient, the target-Q
forward, the loss, backward, gradient clipping, AdamW and the puzzle-embedding sign-SGD. Shapes
are fixed, the carry and the metric sums are updated in place, and nothing in it reads a value
back to the host, so it can be compiled (``--compile``) and captured in a CUDA graph
(``--cuda-graphs``). The loop reads the metric sums only every ``log_every`` steps.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path

import torch

from hrm_fast import checkpoint as ckpt
from hrm_fast.config import RunConfig
from hrm_fast.device import resolve_device
from hrm_fast.early_warning import CollapseWatch
from hrm_fast.errors import UserError
from hrm_fast.model import HRM, Carry, count_parameters

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
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif t.dtype in dtypes:
        dtype = dtypes[t.dtype]
    else:
        raise UserError(f"--dtype: expected auto, fp32, bf16 or fp16, got {t.dtype!r}")
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


class SparseSignSGD:
    """HRM's sign-SGD with decoupled weight decay for the puzzle embeddings, static shapes.

    The batch's rows sit in ``local_weights`` (a leaf). Gradients of rows that share a puzzle id
    are summed with a [B, B] match matrix instead of ``unique`` (which syncs the host); rows with
    the same id then write identical values, so the scatter is deterministic.
    """

    def __init__(self, emb, weight_decay: float, device):
        self.emb, self.weight_decay = emb, weight_decay
        self.lr = torch.zeros((), device=device)  # filled from the host each step

    @torch.no_grad()
    def step(self) -> None:
        grad = self.emb.local_weights.grad
        if grad is None:
            return
        ids = self.emb.local_ids.long()
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
    "accuracy", "exact_accuracy", "unique_classes", "q_halt_accuracy",
)  # fmt: skip


class Trainer:
    def __init__(self, cfg: RunConfig, out_dir: str | Path | None = None, quiet: bool = False):
        from hrm_fast.data import ArcDataset, DeviceSampler

        self.cfg = cfg
        self.out = Path(out_dir) if out_dir is not None else None
        self.quiet = quiet
        self.device, self.backend, self.dtype = resolve_runtime(cfg)
        torch.manual_seed(cfg.train.seed)
        self.dataset = ArcDataset.build(cfg.data, seed=cfg.train.seed)
        self.sampler = DeviceSampler(self.dataset, self.device, self.backend)
        self.model = HRM(
            cfg.model,
            seq_len=cfg.seq_len,
            num_puzzle_ids=self.dataset.num_puzzle_ids,
            batch_size=cfg.train.batch_size,
            backend=self.backend,
            forward_dtype=self.dtype,
        ).to(self.device)
        self.model.train()
        if self.backend == "fused":
            from hrm_fast.kernels.arc_loss import arc_loss_fused as loss_fn
        else:
            from hrm_fast.loss import arc_loss_ref as loss_fn
        self.loss_fn = loss_fn

        t = cfg.train
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        use_graphs = t.cuda_graphs
        self.lr = torch.tensor(t.lr, device=self.device) if use_graphs else t.lr
        opt_kwargs = dict(lr=self.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
        if self.device.type == "cuda":
            opt_kwargs.update(fused=True, capturable=use_graphs)
        self.opt = torch.optim.AdamW(self.params, **opt_kwargs)
        self.sparse = (
            SparseSignSGD(self.model.inner.puzzle_emb, t.puzzle_emb_weight_decay, self.device)
            if cfg.model.puzzle_emb_ndim > 0
            else None
        )

        # Static state: the ACT carry and the metric sums live in fixed buffers.
        example = self.sampler.sample(t.batch_size)
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
        batch = self.sampler.sample(self.cfg.train.batch_size)
        new_carry, out = self.model(carry, batch)
        loss, metrics = self.loss_fn(
            out["logits"],
            new_carry.data["labels"],
            out["q_halt_logits"],
            out["q_continue_logits"],
            out.get("target_q_continue"),
            new_carry.steps,
            self.cfg.loss,
            self.cfg.model.halt_max_steps,
        )
        return new_carry, loss, metrics

    def _step_body(self) -> None:
        new_carry, loss, metrics = self._forward_loss_fn(self.carry)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip, foreach=True)
        self.opt.step()
        if self.sparse is not None:
            self.sparse.step()
            self.sparse.zero_grad()
        self.opt.zero_grad(set_to_none=False)
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
        vals = {k: v.item() for k, v in self.sums.items()}
        n = max(1, self.n_in_sums)
        out = {k: vals[k] / n for k in METRIC_KEYS}
        out["grad_norm"] = vals["grad_norm"] / n
        out["act_steps"] = vals["halted_steps"] / vals["halted"] if vals["halted"] else float("nan")
        for v in self.sums.values():
            v.zero_()
        self.n_in_sums = 0
        return out

    # ------------------------------------------------------------------ state

    def state(self) -> dict:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "version": ckpt.VERSION,
            "step": self.step_count,
            "config": self.cfg.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "sparse": None,  # its state is the table itself, inside "model"
            "carry": {k: v.detach().cpu() for k, v in self.carry.tensors().items()},
            "rng": rng,
            "dataset": {
                "num_puzzle_ids": self.dataset.num_puzzle_ids,
                "task_ids": list(self.dataset.task_ids),
            },
        }

    def load_state(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"], strict=False)
        self.opt.load_state_dict(payload["optimizer"])
        for k, v in self.carry.tensors().items():
            v.copy_(payload["carry"][k].to(self.device))
        torch.set_rng_state(payload["rng"]["cpu"])
        if "cuda" in payload["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(payload["rng"]["cuda"], self.device)
        self.step_count = int(payload["step"])

    def save(self) -> Path:
        path = ckpt.checkpoint_path(self.out, self.step_count)
        ckpt.atomic_save(self.state(), path)
        ckpt.prune(self.out, self.cfg.train.keep_checkpoints)
        return path

    def probe(self):
        from hrm_fast.probe import run_probe

        t = self.cfg.train
        was_training = self.model.training
        self.model.eval()
        # The probe draws its own inputs; fork the RNG so training (and resume) never sees it.
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(t.seed + self.step_count)
                report = run_probe(
                    self.model, self.sampler, t.probe_pairs, t.probe_min_differ, t.probe_min_tv,
                    self.device, generator_seed=t.seed,
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


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, quiet: bool = False) -> int:
    """Run training; returns the process exit code (0, or 3 when the probe fails)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = ckpt.load_latest(out) if resume else None
    if resume and payload is None:
        raise UserError(f"{out}: --resume given but the directory has no readable checkpoint")
    if not resume and ckpt.list_checkpoints(out):
        raise UserError(f"{out}: already holds checkpoints; pass --resume or choose a new --out")

    trainer = Trainer(cfg, out, quiet=quiet)
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    counts = count_parameters(trainer.model)
    log(
        f"hrm-fast: {trainer.device.type} backend={trainer.backend} dtype={str(trainer.dtype)[6:]}"
        f" | {counts['network'] / 1e6:.2f}M network params"
        f" + {counts['puzzle_embedding'] / 1e6:.2f}M"
        f" puzzle-embedding table | {trainer.dataset.num_puzzle_ids} puzzle ids"
    )
    (out / "config.json").write_text(cfg.to_json())
    metrics_f = open(out / "metrics.jsonl", "a")

    def emit(record: dict) -> None:
        metrics_f.write(json.dumps(record) + "\n")
        metrics_f.flush()

    t = cfg.train
    watch = CollapseWatch(t.warn_unique_below, t.warn_intervals, t.warn_probe_shrink)
    if payload is not None:
        trainer.load_state(payload)
        log(f"hrm-fast: resumed from {payload['path']} at step {trainer.step_count}")
    else:
        report = trainer.probe()
        emit({"event": "probe", **report.to_dict()})
        watch.on_probe(report)  # the baseline headroom
        log(f"hrm-fast: {report.summary()}")
        if not report.passed:
            log("hrm-fast: input-sensitivity probe FAILED before step 1; training stopped")
            metrics_f.close()
            return EXIT_PROBE_FAILED

    interrupted = {"flag": False}

    def on_sigint(signum, frame):
        if interrupted["flag"]:  # second Ctrl-C: stop now (the last checkpoint is intact)
            raise KeyboardInterrupt
        interrupted["flag"] = True

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    progress = Progress(t.steps, trainer.step_count, quiet)
    code = 0
    try:
        while trainer.step_count < t.steps and not interrupted["flag"]:
            trainer.step()
            step = trainer.step_count
            if step % t.log_every == 0 or step == t.steps:
                m = trainer.read_metrics()
                m["lr"] = lr_at(step - 1, t.lr, t.warmup_steps, t.steps, t.lr_min_ratio)
                emit({"event": "train", "step": step, **m})
                warning = watch.on_log(step, m["unique_classes"])
                if warning is not None:
                    emit(warning)
                progress.update(
                    step,
                    f"loss {m['loss']:.4f} acc {m['accuracy']:.3f} exact {m['exact_accuracy']:.3f}"
                    f" uniq {m['unique_classes']:.1f} act {m['act_steps']:.2f}"
                    + (f" | WARNING: {warning['message']}" if warning else ""),
                )
                if not math.isfinite(m["loss"]):
                    progress.close()
                    path = trainer.save()
                    raise UserError(f"loss became {m['loss']} at step {step}; saved {path}")
            if step % t.checkpoint_every == 0 or step == t.steps:
                path = trainer.save()
                report = trainer.probe()
                emit({"event": "probe", **report.to_dict(), "checkpoint": str(path)})
                progress.close()
                log(f"hrm-fast: checkpoint {path.name} | {report.summary()}")
                warning = watch.on_probe(report)
                if warning is not None:
                    emit(warning)
                    log(f"hrm-fast: WARNING at step {step}: {warning['message']}")
                if not report.passed:
                    log(
                        f"hrm-fast: input-sensitivity probe FAILED at step {step}; training stopped"
                    )
                    code = EXIT_PROBE_FAILED
                    break
        if interrupted["flag"]:
            progress.close()
            path = trainer.save()
            log(f"hrm-fast: interrupted at step {trainer.step_count}; saved {path}")
    finally:
        signal.signal(signal.SIGINT, old_handler)
        metrics_f.close()
    progress.close()
    return code
