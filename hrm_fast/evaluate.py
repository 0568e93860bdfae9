"""Held-out evaluation with augmentation voting (HRM's protocol): ``hrm-fast eval CKPT``; voting and
scoring live in ``hrm_fast.scoring``.

For every held-out test pair of every eval task, the model predicts under K augmentations from
the task's pool (k = 0..K-1, k = 0 the identity, K capped by the pool size) at translation
offset 0 with puzzle id ``puzzle_id(t, k)``, running all ``halt_max_steps`` ACT steps. Each
prediction is cropped and mapped back to the original frame (``invert_batch``); identical grids
(shape + cells) form a group; groups rank by count, ties by mean sigmoid(q_halt). pass@1: the
top group equals the target exactly; pass@2: one of the top two does, pass@k one of the top k
(``--pass-k``). A task counts as solved when all its test pairs are. The report splits tasks
into seen (a learned puzzle id) and unseen (the blank id), and says when scored test pairs also
appear, by content, among the pairs the checkpoint trained on (``hrm_fast.overlap``).

An eval task with no trainable pairs (no puzzle id) is predicted with the blank id 0 and a
seeded augmentation pool of its own: HRM learns tasks through their puzzle embedding, so it
cannot know such a task, and its score is reported separately.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hrm_fast.checkpoint import default_out, refuse_non_finite
from hrm_fast.device import resolve_device, resolve_dtype
from hrm_fast.errors import UserError, WriteFailed
from hrm_fast.files import os_reason, prepare_dir, write_output
from hrm_fast.memory import check_inference_fits, num_puzzle_ids
from hrm_fast.scoring import DEFAULT_PASS_K, TaskResult, score_tasks, summarise

BLANK_POOL_SEED_OFFSET = 7919  # pool for tasks without a puzzle id: seed + this


# --------------------------------------------------------------------------- prediction


@dataclass
class Item:
    """One model input: eval task ``e``'s test pair ``pair`` (bank index) under augmentation k."""

    e: int
    pair: int
    k: int
    dihedral: int
    colour_map: np.ndarray  # uint8 [10]
    puzzle_id: int


def build_items(
    dataset, n_aug: int, n_tasks: int, seed: int, rows=None, by_round: bool = False
) -> list[Item]:
    """All (test pair, augmentation) inputs of the first ``n_tasks`` eval tasks.

    ``rows``: per eval task, its ``TaskRows`` (puzzle ids and pool) or None (the blank id with
    a seeded pool of its own); by default the dataset's training layout. ``by_round``: order
    the items augmentation-major (every pair's k = 0, then every pair's k = 1, ...), so a run
    stopped early has voted on every pair; within a pair the order is the same either way.
    """
    from hrm_fast.grid_transforms import sample_pool
    from hrm_fast.puzzle_rows import TaskRows

    k_max = max(1, min(n_aug, dataset.n_aug))
    blank_dih, blank_cmap = sample_pool(
        len(dataset.eval_task_ids), dataset.n_aug, seed + BLANK_POOL_SEED_OFFSET
    )
    if rows is None:
        rows = [
            TaskRows.of_dataset(dataset, int(t)) if t >= 0 else None
            for t in dataset.eval_task_puzzle
        ]
    items = []
    for e in range(n_tasks):
        r = rows[e]
        for p in dataset.eval_pairs[e]:
            for k in range(min(k_max, r.n_aug) if r is not None else k_max):
                if r is not None:
                    dih, cmap, pid = r.dihedral[k], r.colour_map[k], int(r.ids[k])
                else:
                    dih, cmap, pid = blank_dih[e, k], blank_cmap[e, k], 0
                items.append(Item(e, int(p), k, int(dih), np.asarray(cmap, np.uint8), pid))
    if by_round:
        items.sort(key=lambda it: it.k)  # stable: task and pair order kept within a round
    return items


@torch.inference_mode()
def predict(
    model,
    bank,
    items: list[Item],
    canvas: int,
    halt_max_steps: int,
    batch_size: int,
    device,
    progress=None,
    should_stop=None,
):
    """Run the model on every item; returns (grids in the original frame, sigmoid(q_halt)).

    Batches are padded to ``batch_size`` (static shapes: one compiled graph / kernel config).
    ``should_stop()``, asked before each batch after the first, ends the run early: the lists
    then cover the first items only.
    """
    from hrm_fast.kernels.augment import augment_batch, invert_batch

    device = torch.device(device)
    bank = bank.to(device)
    grids: list[np.ndarray] = []
    q_out: list[float] = []
    for start in range(0, len(items), batch_size):
        if start and should_stop is not None and should_stop():
            break
        chunk = items[start : start + batch_size]
        n = len(chunk)
        padded = chunk + [chunk[0]] * (batch_size - n)
        pair = torch.tensor([it.pair for it in padded], dtype=torch.long, device=device)
        dih = torch.tensor([it.dihedral for it in padded], dtype=torch.long, device=device)
        cmap = torch.from_numpy(np.stack([it.colour_map for it in padded])).to(device)
        pid = torch.tensor([it.puzzle_id for it in padded], dtype=torch.int32, device=device)
        offset = torch.zeros(batch_size, 2, dtype=torch.long, device=device)
        inputs, labels = augment_batch(
            bank.inputs, bank.outputs, bank.shapes, pair, dih, cmap, offset, canvas
        )
        batch = dict(inputs=inputs, labels=labels, puzzle_identifiers=pid)
        carry = model.initial_carry(batch)
        out = None
        for _ in range(halt_max_steps):  # eval mode never halts early: all steps, every example
            carry, out = model(carry, batch)
        tokens = out["logits"].argmax(-1).to(torch.int32)
        inv, shapes = invert_batch(tokens, dih, cmap, canvas)
        q = torch.sigmoid(out["q_halt_logits"].float())
        inv, shapes, q = inv[:n].cpu().numpy(), shapes[:n].cpu().numpy(), q[:n].cpu().numpy()
        for b in range(n):
            h, w = shapes[b]
            grids.append(inv[b, :h, :w].copy())
            q_out.append(float(q[b]))
        if progress is not None:
            progress(start + n)
    return grids, q_out


# --------------------------------------------------------------------------- evaluation


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def _default_eval_source(source: str) -> str:
    from hrm_fast.arc_files import BUILTIN_SOURCES, split_sources

    builtins = [s for s in split_sources(source) if s in BUILTIN_SOURCES]
    return f"{builtins[0]} evaluation" if builtins else f"{source} (own test pairs)"


def run_predictions(
    model, bank, items, cfg, batch_size, device, quiet=False, dp=None, should_stop=None
):
    """``predict`` with the progress line (rate, ETA); under torchrun (``dp``) each rank
    predicts whole batches and rank 0 gets every prediction back in item order (others get
    None). Returns (grids, sigmoid(q_halt)), covering the first items only if stopped early."""
    from hrm_fast.progress import Progress

    mine = list(range(len(items)))
    if dp is not None:
        from hrm_fast.distributed import shard_batches

        mine = shard_batches(len(items), batch_size, dp.rank, dp.world)
    prog = Progress(len(mine), 0, quiet=quiet, unit="canvases")
    last = {"t": 0.0}

    def on_batch(done: int) -> None:  # redraw on a terminal; every few seconds in a log
        now = time.perf_counter()
        if prog.tty or done == len(mine) or now - last["t"] >= 5.0:
            last["t"] = now
            prog.update(done)

    grids, q_prob = predict(
        model,
        bank,
        [items[i] for i in mine],
        cfg.data.canvas,
        cfg.model.halt_max_steps,
        batch_size,
        device,
        progress=on_batch,
        should_stop=should_stop,
    )
    prog.close()
    if dp is not None:  # every rank's predictions, back in item order, on rank 0
        parts = dp.gather_objects((mine, grids, q_prob))
        if not dp.is_main:
            return None
        grids, q_prob = [None] * len(items), [0.0] * len(items)
        for idx, g, q in parts:
            for i, gi, qi in zip(idx, g, q, strict=True):
                grids[i], q_prob[i] = gi, qi
    return grids, q_prob


def predict_and_score(
    model, dataset, items, cfg, batch_size, device, quiet=False, dp=None
) -> list[TaskResult] | None:
    """Predict every item, vote and score per task (rank 0; None on the other ranks)."""
    predicted = run_predictions(
        model, dataset.bank, items, cfg, batch_size, device, quiet=quiet, dp=dp
    )
    if predicted is None:
        return None
    grids, q_prob = predicted
    return score_tasks(dataset, items, grids, q_prob)


HELD_OUT_KEYS = ("pass1", "pass2", "pixel_accuracy", "pair_pass1", "pair_pass2", "n_tasks",
                 "n_test_pairs")  # fmt: skip


def held_out_scores(
    model, dataset, cfg, n_tasks: int, n_aug: int, batch_size: int, device, quiet=True, dp=None
) -> dict | None:
    """What ``hrm-fast eval --max-tasks n_tasks --n-aug n_aug`` reports overall (the
    ``HELD_OUT_KEYS`` of ``summarise``, plus ``n_aug``, the K used), for a model in memory:
    the train loop's held-out score. ``n_tasks`` 0: every held-out task. The model runs as
    given (eval mode, EMA weights: the caller's choice). Rank 0 gets the dict, others None."""
    total = len(dataset.eval_task_ids)
    n = min(total, n_tasks) if n_tasks else total
    items = build_items(dataset, n_aug, n, cfg.train.seed)
    results = predict_and_score(model, dataset, items, cfg, batch_size, device, quiet, dp)
    if results is None:
        return None
    overall = summarise(results)
    return {k: overall[k] for k in HELD_OUT_KEYS} | {"n_aug": max(1, min(n_aug, dataset.n_aug))}


def load_for_inference(checkpoint, device, quiet: bool = False, dp=None):
    """(model, RunConfig, payload, backend) of a checkpoint: the training backend and dtype on
    CUDA (fused kernels after the self-check, bf16), the reference elsewhere, in the run's dtype
    on a CPU (``auto``: bf16 where the CPU computes it) and fp32 on MPS. The check's
    line goes to stderr; ``backend`` names a fallback ("reference", "fused, SDPA attention")."""
    from hrm_fast import checkpoint as ckpt
    from hrm_fast.config import RunConfig
    from hrm_fast.selfcheck import checked_backend

    path = ckpt.resolve(checkpoint)
    if device.type != "cuda":
        # The run's own dtype (auto: bf16 on CPUs that compute it), so eval scores a checkpoint
        # with the numerics its held-out scores were logged with during training.
        payload = ckpt.load(path, map_location="cpu")
        run_dtype = RunConfig.from_dict(payload["config"]).train.dtype
        dtype = resolve_dtype(run_dtype, device) if device.type == "cpu" else torch.float32
        model, cfg, payload = ckpt.model_from_checkpoint(payload, device=device, dtype=dtype)
        return model, cfg, payload, "reference"
    payload = ckpt.load(path, map_location="cpu")
    cfg = RunConfig.from_dict(payload["config"])
    backend, attention, note = checked_backend(cfg, device, "auto", dp=dp)
    attention = attention or cfg.train.attention
    if note is not None and not quiet and (dp is None or dp.is_main):
        print(f"hrm-fast: {note}", file=sys.stderr, flush=True)
    model, cfg, payload = ckpt.model_from_checkpoint(
        payload, device=device, backend=backend, dtype=torch.bfloat16, attention=attention
    )
    label = "fused, SDPA attention" if backend == "fused" and attention == "sdpa" else backend
    return model, cfg, payload, label


def _rows_by_task_id(dataset, payload, cfg):
    """Each eval task's puzzle rows: its own in the checkpoint's table where a block appended
    by ``adapt`` holds it (the dataset then counts it as seen), else the training layout."""
    from hrm_fast.puzzle_rows import TaskRows, checkpoint_task_rows, table_rows

    if not (payload.get("dataset") or {}).get("puzzle_blocks"):
        return None
    known = checkpoint_task_rows(payload, cfg, table_rows(payload))
    rows = []
    for e, (tid, t) in enumerate(zip(dataset.eval_task_ids, dataset.eval_task_puzzle, strict=True)):
        r = known.get(tid)
        if r is None and t >= 0:
            r = TaskRows.of_dataset(dataset, int(t))
        if r is not None and t < 0:
            dataset.eval_task_puzzle[e] = 0  # scored with learned rows: a seen task
        rows.append(r)
    return rows


def evaluate(
    checkpoint,
    out=None,
    n_aug: int = 8,
    max_tasks: int = 0,
    batch_size: int = 32,
    render: int = 4,
    device="auto",
    eval_source: str | None = None,
    quiet: bool = False,
    dp=None,
    pass_k=DEFAULT_PASS_K,
    act_steps=None,
) -> dict | None:
    """Evaluate a checkpoint; writes ``eval.json`` (and ``eval.png``) into ``out``; returns
    the eval.json dict.

    ``dp`` (``hrm_fast.distributed``, under torchrun): each rank predicts whole batches of the
    single-process batching, rank 0 gathers the predictions, scores and writes (others get
    None), so eval.json is the one a single process writes. A Sudoku / maze checkpoint is
    scored on its held-out boards (``hrm_fast.board_eval``; ``act_steps``: ACT step counts to
    score)."""
    from hrm_fast.data import ArcDataset, dataset_kind
    from hrm_fast.overlap import dataset_overlap

    if n_aug < 1:
        raise UserError(f"--n-aug must be >= 1, got {n_aug}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if max_tasks < 0:
        raise UserError(f"--max-tasks must be >= 0, got {max_tasks}")
    if render < 0:
        raise UserError(f"--render must be >= 0, got {render}")
    pass_k = tuple(sorted(set(pass_k)))
    if not pass_k or pass_k[0] < 1:
        raise UserError(f"--pass-k: every k must be >= 1, got {pass_k}")
    dev = resolve_device(device) if dp is None else dp.device
    model, cfg, payload, backend = load_for_inference(checkpoint, dev, quiet, dp)
    refuse_non_finite(payload)
    path = Path(payload["path"])
    check_inference_fits(cfg, num_puzzle_ids(model), batch_size, dev, f"--batch-size {batch_size}")
    if dataset_kind(cfg.data) != "arc":
        return _evaluate_boards(model, cfg, payload, out, act_steps, batch_size, render, dev,
                                quiet, dp)  # fmt: skip
    if act_steps:
        raise UserError("--act-steps: only for Sudoku / maze checkpoints")
    if eval_source:
        from hrm_fast.arc_files import BUILTIN_SOURCES, split_sources

        for part in split_sources(eval_source) if eval_source != "none" else []:
            if part not in BUILTIN_SOURCES and not Path(part).exists():
                raise UserError(f"--eval-source: {part}: no such file or directory")
        cfg.data.eval_source = eval_source
    dataset = ArcDataset.build(cfg.data, seed=cfg.train.seed)
    trained = list(payload.get("dataset", {}).get("task_ids", dataset.task_ids))
    if trained != list(dataset.task_ids):
        diff = next(
            (i for i, (a, b) in enumerate(zip(trained, dataset.task_ids, strict=False)) if a != b),
            min(len(trained), len(dataset.task_ids)),
        )
        raise UserError(
            f"{path}: the checkpoint's {len(trained)} puzzle tasks do not match the "
            f"{len(dataset.task_ids)} rebuilt from its config (first difference at index {diff}); "
            "is the task data (or --eval-source) the one it was trained with?"
        )
    n_tasks = len(dataset.eval_task_ids)
    if max_tasks:
        n_tasks = min(n_tasks, max_tasks)
    if n_tasks == 0:
        raise UserError(f"{path}: no held-out eval tasks (eval_source={cfg.data.eval_source!r})")
    out_dir = prepare_dir(Path(out) if out else default_out(path), "--out")  # before the work

    rows = _rows_by_task_id(dataset, payload, cfg)
    items = build_items(dataset, n_aug, n_tasks, cfg.train.seed, rows=rows)
    k = max(1, min(n_aug, dataset.n_aug))
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    n_blank = int((dataset.eval_task_puzzle[:n_tasks] < 0).sum())
    capped = f", --n-aug {n_aug} capped by the pool size" if k < n_aug else ""
    log(
        f"hrm-fast eval: {path} | {n_tasks} tasks, {len(items)} canvases "
        f"(K={k} augmentations{capped}, {cfg.model.halt_max_steps} ACT steps) | "
        f"{dev.type} {backend}"
    )
    overlap = dataset_overlap(dataset, n_tasks)
    if overlap.n_overlapping_pairs:
        log(f"hrm-fast eval: warning: {overlap.summary()}")
    results = predict_and_score(model, dataset, items, cfg, batch_size, dev, quiet, dp)
    if results is None:  # a torchrun rank other than 0
        return None
    overall = summarise(results, pass_k)

    report = {
        "checkpoint": str(path),
        "step": int(payload.get("step", 0)),
        "eval_source": cfg.data.eval_source or _default_eval_source(cfg.data.source),
        "n_aug": int(k),
        "halt_max_steps": cfg.model.halt_max_steps,
        "pass_k": list(pass_k),
        "overall": overall,
        "overlap": overlap.to_dict(),
        "tasks": {r.task_id: r.to_dict() for r in results},
    }
    write_output(out_dir / "eval.json", json.dumps(_json_safe(report), indent=1), WriteFailed)
    png = None
    if render:
        rows = []
        for r in results[:render]:
            for p, ps in zip(dataset.eval_pairs[r.e], r.pairs, strict=True):
                inp, tgt = dataset.bank.pair(int(p))
                rows.append(
                    dict(
                        task_id=r.task_id,
                        input=inp,
                        target=tgt,
                        prediction=ps.top,
                        correct=ps.pass1,
                    )
                )
        if rows:
            from hrm_fast.render import render_tasks

            try:
                png = render_tasks(rows, out_dir / "eval.png")
            except OSError as e:
                raise WriteFailed(
                    f"{out_dir / 'eval.png'}: cannot write: {os_reason(e)} "
                    f"({out_dir / 'eval.json'} was written)"
                ) from None
    report["paths"] = {"json": str(out_dir / "eval.json"), "png": str(png) if png else None}

    if not quiet:
        print(summary(report, n_blank))
    return report


def _evaluate_boards(model, cfg, payload, out, act_steps, batch_size, render, dev, quiet, dp):
    """A board checkpoint's eval on rank 0 (the held-out boards are few; other ranks wait)."""
    from hrm_fast.board_eval import evaluate_boards
    from hrm_fast.data import build_dataset, check_same_data

    if dp is not None and not dp.is_main:
        return None
    dataset = build_dataset(cfg.data, seed=cfg.train.seed)
    check_same_data(payload, dataset)
    return evaluate_boards(model, cfg, payload, dataset, out, act_steps, batch_size, render,
                           dev, quiet)  # fmt: skip


def _pass_line(part: dict) -> str:
    return "  ".join(f"pass@{k} {v:.3f}" for k, v in part["pass_at"].items())


def summary(report: dict, n_blank: int | None = None) -> str:
    o = report["overall"]
    n_blank = o["n_tasks_without_puzzle_id"] if n_blank is None else n_blank
    pass_at = o.get("pass_at") or {"1": o["pass1"], "2": o["pass2"]}
    lines = [
        f"eval step {report['step']}: {o['n_tasks']} tasks, {o['n_test_pairs']} test pairs, "
        f"K={report['n_aug']} augmentations",
        f"  {_pass_line({'pass_at': pass_at})}  (tasks; all test pairs exact)",
        f"  test pairs: pass@1 {o['pair_pass1']:.3f}  pass@2 {o['pair_pass2']:.3f}  "
        f"pixel accuracy {o['pixel_accuracy']:.3f}",
    ]
    for name, what in (("seen", "learned puzzle id"), ("unseen", "blank id")):
        part = o.get(name)
        if part and part["n_tasks"] and part["n_tasks"] < o["n_tasks"]:
            lines.append(
                f"  {name} ({what}): {part['n_tasks']} tasks  {_pass_line(part)}  "
                f"pixel accuracy {part['pixel_accuracy']:.3f}"
            )
    if n_blank:
        lines.append(
            f"  {n_blank} task(s) had no puzzle id (no trainable pairs): predicted with the blank "
            "id; HRM cannot know them"
        )
    ov = report.get("overlap")
    if ov and ov.get("n_overlapping_pairs"):
        lines.append(
            f"  overlap: {ov['n_overlapping_pairs']} of {ov['n_scored_pairs']} scored test pairs "
            f"({len(ov['task_ids'])} tasks) are also training pairs: these scores are not "
            "held-out"
        )
    paths = report.get("paths", {})
    lines.append(
        f"  wrote {paths.get('json')}" + (f" and {paths['png']}" if paths.get("png") else "")
    )
    return "\n".join(lines)


def main(args) -> int:
    from hrm_fast import distributed

    dp = distributed.setup(args.device)  # None in a single process; torchrun shards the tasks
    try:
        evaluate(
            args.checkpoint,
            out=args.out,
            n_aug=args.n_aug,
            max_tasks=args.max_tasks,
            batch_size=args.batch_size,
            render=args.render,
            device=args.device,
            eval_source=args.eval_source,
            quiet=dp is not None and not dp.is_main,
            dp=dp,
            pass_k=args.pass_k,
            act_steps=getattr(args, "act_steps", None),
        )
    except BaseException:
        if dp is not None:
            dp.close(wait_for_all=False)
        raise
    if dp is not None:
        dp.close()
    return 0
