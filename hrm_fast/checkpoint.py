"""Checkpoints: atomic writes, discovery, and rebuilding a model from one.

A checkpoint is one ``torch.save`` file ``DIR/checkpoints/step_{step:09d}.pt`` holding
``{"version", "step", "config", "model", "optimizer", "sparse", "ema", "carry", "rng", "dataset"}``
(``ema``: the averaged network weights as a plain {name: tensor} dict, or None).
It is written to a temporary file in the same folder, fsynced, then renamed over the final
name, so a crash mid-write leaves every earlier checkpoint intact.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from hrm_fast.config import RunConfig
from hrm_fast.errors import UserError

VERSION = 1
_NAME = re.compile(r"^step_(\d{9})\.pt$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:09d}.pt"


def atomic_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def list_checkpoints(run_dir: Path) -> list[Path]:
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def prune(run_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for p in list_checkpoints(run_dir)[:-keep]:
        p.unlink(missing_ok=True)


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its latest checkpoint)."""
    p = Path(path)
    if p.is_dir():
        ckpts = list_checkpoints(p)
        if not ckpts:
            raise UserError(f"{p}: no checkpoints (expected {checkpoint_dir(p)}/step_*.pt)")
        return ckpts[-1]
    if not p.exists():
        raise UserError(f"{p}: no such checkpoint file or run directory")
    return p


def load(path: str | Path, map_location="cpu") -> dict:
    p = resolve(path)
    try:
        payload = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or foreign file
        raise UserError(f"{p}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise UserError(f"{p}: not an hrm-fast checkpoint (missing 'model' or 'config')")
    payload["path"] = str(p)
    return payload


def load_latest(run_dir: Path, map_location="cpu") -> dict | None:
    """The newest checkpoint that loads; a damaged newest one falls back to the one before."""
    for p in reversed(list_checkpoints(run_dir)):
        try:
            return load(p, map_location)
        except UserError:
            continue
    return None


def model_from_checkpoint(path, device="cpu", backend="reference", dtype=torch.float32):
    """Rebuild the model (HRM or TRM) in a checkpoint, with its EMA weights where it has
    them. Returns (model in eval mode, RunConfig, payload)."""
    from hrm_fast.arch import build_model

    payload = load(path, map_location="cpu")
    cfg = RunConfig.from_dict(payload["config"])
    ds = payload.get("dataset", {})
    model = build_model(
        cfg.model,
        seq_len=cfg.seq_len,
        num_puzzle_ids=int(ds.get("num_puzzle_ids", 1)),
        batch_size=cfg.train.batch_size,
        backend=backend,
        forward_dtype=dtype,
    )
    missing, unexpected = model.load_state_dict(payload["model"], strict=False)
    missing = [k for k in missing if not k.endswith(("local_weights", "local_ids"))]
    if missing or unexpected:
        raise UserError(
            f"{payload['path']}: model state does not match its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if payload.get("ema") is not None:
        from hrm_fast.ema import load_ema_weights

        try:
            load_ema_weights(model, payload["ema"])
        except KeyError as e:
            raise UserError(f"{payload['path']}: {e.args[0]}") from None
    return model.to(device).eval(), cfg, payload
