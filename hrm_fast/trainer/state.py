"""The training state on disk: the checkpoint payload, saving and restoring it, and the checks
that a resumed run is the same run (its model, data, batch size, seed and optimizer)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from hrm_fast import checkpoint as ckpt
from hrm_fast.config import RunConfig
from hrm_fast.data import check_same_data
from hrm_fast.distributed import rank_seed
from hrm_fast.ema import EMA
from hrm_fast.errors import UserError


def make_payload(
    *,
    step: int,
    config: dict,
    model: dict,
    dataset: dict,
    optimizer: dict | None = None,
    ema: dict | None = None,
    carry: dict | None = None,
    rng: dict | None = None,
    world_size: int = 1,
    **extra,
) -> dict:
    """The one checkpoint dict (see ``hrm_fast.checkpoint``). A model-only checkpoint (from
    ``convert``) leaves optimizer, ema, carry and rng None: a run resumed from it starts those
    fresh. The puzzle-embedding sign-SGD keeps no state beyond the table in ``model``."""
    return {
        "version": ckpt.VERSION,
        "step": step,
        "config": config,
        "model": model,
        "optimizer": optimizer,
        "ema": ema,
        "carry": carry,
        "rng": rng,
        "world_size": world_size,
        **extra,
        "dataset": dataset,
    }


def training_payload(trainer) -> dict | None:
    """The trainer's checkpoint payload. With several ranks, each rank's carry and RNG state are
    gathered to rank 0 (a collective: every rank calls this); other ranks get None."""
    rng = {"cpu": torch.get_rng_state()}
    if trainer.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(trainer.device)
    carry = {k: v.detach().cpu() for k, v in trainer.carry.tensors().items()}
    extra = {"held_out": trainer.held_out} if trainer.held_out is not None else {}
    if trainer.dp is not None:
        carries = trainer.dp.gather_tensors(carry)
        rngs = trainer.dp.gather_tensors(rng)
        if not trainer.dp.is_main:
            return None
        # The global batch's carry (rank r holds rows [r*b, (r+1)*b)); every rank's RNG.
        carry = {k: torch.cat([c[k] for c in carries]) for k in carry}
        extra["rank_rng"] = rngs
    return make_payload(
        step=trainer.step_count,
        config=trainer.cfg.to_dict(),
        model={k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
        # A frozen network (adapt --mode embeddings) has no optimiser: an empty state.
        optimizer=(
            trainer.opt.state_dict()
            if trainer.opt is not None
            else {"state": {}, "param_groups": []}
        ),
        ema=trainer.ema.state_dict() if trainer.ema is not None else None,
        carry=carry,
        rng=rng,
        world_size=trainer.world_size,
        **extra,
        **trainer.payload_extra,
        dataset=dict(trainer.dataset_record),
    )


def save_checkpoint(trainer, run_dir: Path) -> Path:
    """Write this step's checkpoint atomically (OSError on failure, older ones intact). Every
    rank calls it; rank 0 writes."""
    path = ckpt.checkpoint_path(run_dir, trainer.step_count)
    payload = training_payload(trainer)
    if payload is not None:
        ckpt.atomic_save(payload, path)
    return path


def load_state(trainer, payload: dict) -> None:
    """Restore a checkpoint into ``trainer``. One written by ``convert`` holds weights only (no
    optimiser, carry or RNG state): those start fresh, as at step 0. The ACT carry and RNG state
    are restored when the checkpoint was written by as many ranks as run now; otherwise the
    carries restart (every example fetches a fresh one) and each rank's RNG is seeded by
    (seed, rank, step)."""
    where = payload.get("path", "checkpoint")
    dp = trainer.dp
    rank = 0 if dp is None else dp.rank
    try:
        trainer.model.load_state_dict(payload["model"], strict=False)
        if payload.get("optimizer") is not None and trainer.opt is not None:
            trainer.opt.load_state_dict(payload["optimizer"])
        if trainer.ema is not None:  # a checkpoint without one (convert) starts it afresh
            if payload.get("ema") is not None:
                trainer.ema.load_state_dict(payload["ema"])
            else:
                trainer.ema = EMA(trainer.model, trainer.cfg.train.ema_rate)
        carry, rng = payload.get("carry"), payload.get("rng") or {}
        if int(payload.get("world_size", 1)) != trainer.world_size:
            carry, rng = None, {}
            torch.manual_seed(rank_seed(trainer.cfg.train.seed, rank, int(payload["step"])))
        elif dp is not None:
            rng = payload["rank_rng"][rank]
        if carry is not None:
            rows = slice(rank * trainer.batch_size, (rank + 1) * trainer.batch_size)
            for k, v in trainer.carry.tensors().items():
                v.copy_(carry[k][rows].to(trainer.device))
        if "cpu" in rng:
            torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and trainer.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], trainer.device)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        msg = " ".join(str(e).split())[:160]
        raise UserError(f"{where}: does not fit this run's model or data ({msg})") from None
    trainer.step_count = int(payload["step"])
    held_out = payload.get("held_out")
    trainer.held_out = dict(held_out) if isinstance(held_out, dict) else None


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


def check_resume_data(trainer, payload: dict) -> None:
    """UserError when the data now loaded gives other puzzle tasks (or boards) than the
    checkpoint's."""
    saved = payload.get("dataset", {}).get("task_ids")
    if saved is None or payload.get("optimizer") is None:
        return
    check_same_data(payload, trainer.dataset)
    now = list(trainer.dataset.task_ids)
    if list(saved) != now:
        i = next((i for i, (a, b) in enumerate(zip(saved, now, strict=False)) if a != b),
                 min(len(saved), len(now)))  # fmt: skip
        raise UserError(
            f"{payload.get('path')}: trained on {len(saved)} puzzle tasks, the data now gives "
            f"{len(now)} (first difference at index {i}); has --source changed?"
        )
