"""Optional run trackers: TensorBoard (``--tensorboard true``) and Weights & Biases (``--wandb P``).

The train loop hands every record it writes to ``metrics.jsonl`` to ``Trackers.record``, so a
tracker sees exactly what the file holds and adds no host sync to the step: train records (the
device sums the loop reads every ``--log-every`` steps) become scalars ``train/<key>``; probe
records become ``probe/frac_differ``, ``probe/mean_tv``, ``probe/passed`` and
``probe/input_gain``, plus one picture of the model's predictions on a few fixed training
examples (input | target | prediction); held-out eval records (``--eval-every``) become
``eval/<key>``.
Trackers are opened only where ``metrics.jsonl`` is written, so under torchrun only rank 0 logs.
"""

from __future__ import annotations

import netrc
import os
import socket
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import numpy as np
import torch

from hrm_fast.errors import UserError

PREDICTION_ROWS = 4  # training examples drawn at each checkpoint
PROBE_KEYS = ("frac_differ", "mean_tv", "passed", "input_gain")
WANDB_ID_FILE = "wandb-run-id"  # a resumed run continues the same W&B run


class Tracker(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def image(self, step: int, tag: str, rgb: np.ndarray) -> None: ...

    def close(self) -> None: ...


class Trackers:
    """Fans metrics.jsonl records out to the open trackers (none: every call is a no-op)."""

    def __init__(self, trackers: list[Tracker], trainer=None):
        self.trackers, self.trainer = trackers, trainer

    def record(self, rec: dict) -> None:
        if not self.trackers or "step" not in rec:
            return
        step, event = int(rec["step"]), rec.get("event")
        if event == "train":
            values = {f"train/{k}": float(v) for k, v in rec.items() if _is_number(k, v)}
        elif event == "probe":
            values = {f"probe/{k}": float(rec[k]) for k in PROBE_KEYS if rec.get(k) is not None}
        elif event == "eval":  # the held-out score during training (--eval-every)
            values = {f"eval/{k}": float(v) for k, v in rec.items() if _is_number(k, v)}
        else:
            return
        for t in self.trackers:
            t.scalars(step, values)
        if event == "probe" and self.trainer is not None:
            rgb = prediction_image(self.trainer)
            for t in self.trackers:
                t.image(step, "predictions", rgb)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
        self.trackers = []


def _is_number(key: str, v) -> bool:
    return key != "step" and isinstance(v, int | float) and not isinstance(v, bool)


def open_trackers(cfg, run_dir: Path, trainer=None, start_step: int = 0, log=None) -> Trackers:
    """The trackers ``cfg.train`` asks for; ``start_step`` > 0 means a resumed run."""
    t = cfg.train
    opened: list[Tracker] = []
    try:
        if t.tensorboard:
            opened.append(TensorBoardTracker(Path(run_dir) / "tb", start_step))
        if t.wandb:
            opened.append(WandbTracker(t.wandb, Path(run_dir), cfg.to_dict(), log=log))
    except BaseException:
        for tr in opened:
            tr.close()
        raise
    return Trackers(opened, trainer)


# --------------------------------------------------------------------------- TensorBoard


class TensorBoardTracker:
    def __init__(self, log_dir: Path, start_step: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "--tensorboard: the tensorboard package is not installed; "
                "pip install hrm-fast[tensorboard]"
            ) from None
        # On resume, events a killed run wrote past the checkpoint are purged (they are
        # written again), so TensorBoard shows one continuous curve.
        purge = start_step + 1 if start_step > 0 else None
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge, flush_secs=30)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, step: int, tag: str, rgb: np.ndarray) -> None:
        self.writer.add_image(tag, rgb, step, dataformats="HWC")
        self.writer.flush()  # a checkpoint: make it visible now

    def close(self) -> None:
        self.writer.close()


# --------------------------------------------------------------------------- Weights & Biases


def _wandb_host(env) -> str:
    return urlparse(env.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"


def _has_api_key(env, host: str) -> bool:
    if env.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode(env=None, reachable=_reachable) -> str | None:
    """The mode to start W&B in: the user's ``WANDB_MODE`` if set (None: wandb reads it),
    else "offline" without an API key or without a connection to the W&B host, else "online"."""
    env = os.environ if env is None else env
    if env.get("WANDB_MODE"):
        return None
    host = _wandb_host(env)
    if not _has_api_key(env, host) or not reachable(host):
        return "offline"
    return "online"


class WandbTracker:
    def __init__(self, project: str, run_dir: Path, config: dict, log=None):
        try:
            import wandb
        except ImportError:
            raise UserError(
                "--wandb: the wandb package is not installed; pip install hrm-fast[wandb]"
            ) from None
        self.wandb = wandb
        mode = wandb_mode()
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        kwargs = dict(mode=mode) if mode else {}
        # wandb's own console capture and chatter would break the progress line.
        settings = wandb.Settings(silent=True, console="off")
        self.run = wandb.init(
            project=project, dir=str(run_dir), id=run_id, name=run_dir.name, resume="allow",
            config=config, settings=settings, **kwargs,
        )  # fmt: skip
        # The run's own step is the x axis: W&B drops records whose internal step goes back,
        # and a resumed run re-logs the steps a killed run wrote past its checkpoint.
        self.run.define_metric("step")
        for prefix in ("train/*", "probe/*", "predictions"):
            self.run.define_metric(prefix, step_metric="step")
        if log is None:
            return
        if (mode or os.environ.get("WANDB_MODE")) == "offline":
            log(f"hrm-fast: W&B offline; upload it later with `wandb sync {run_dir / 'wandb'}/*`")
        elif self.run.url:
            log(f"hrm-fast: W&B run {self.run.url}")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log({"step": step, **values})

    def image(self, step: int, tag: str, rgb: np.ndarray) -> None:
        self.run.log({"step": step, tag: self.wandb.Image(rgb)})

    def close(self) -> None:
        self.run.finish()


# --------------------------------------------------------------------------- predictions


def prediction_image(trainer, n: int = PREDICTION_ROWS) -> np.ndarray:
    """input | target | prediction for ``n`` fixed training examples (same ones at every
    checkpoint: the draw is seeded and forked, so training's RNG stream is untouched)."""
    from hrm_fast.grid_transforms import invert_batch_ref
    from hrm_fast.render import tasks_image

    model, sampler, cfg = trainer.model, trainer.sampler, trainer.cfg
    devices = [trainer.device] if trainer.device.type == "cuda" else []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(cfg.train.seed)
            d = sampler.draw(n)
            d["offset"] = torch.zeros_like(d["offset"])  # invert_batch_ref wants offset 0
            inputs, labels = sampler.augment(d)
            batch = dict(inputs=inputs, labels=labels, puzzle_identifiers=d["puzzle"].int())
            carry = model.initial_carry(batch)
            out = None
            for _ in range(cfg.model.halt_max_steps):  # eval mode: every ACT step
                carry, out = model(carry, batch)
            tokens = out["logits"].argmax(-1).cpu()
    finally:
        model.train(was_training)
    d = {k: v.cpu() for k, v in d.items()}
    grids, shapes = invert_batch_ref(tokens, d["dihedral"], d["colour_map"], cfg.data.canvas)
    rows = []
    for b in range(n):
        inp, tgt = trainer.dataset.bank.pair(int(d["pair"][b]))
        h, w = shapes[b].tolist()
        pred = grids[b, :h, :w].numpy()
        rows.append(
            dict(
                task_id=trainer.dataset.task_ids[int(d["task"][b])],
                input=inp,
                target=tgt,
                prediction=pred,
                correct=pred.shape == tgt.shape and bool((pred == tgt).all()),
            )
        )
    return tasks_image(rows)
