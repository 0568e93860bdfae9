"""Answers for ARC tasks, seen or not: ``hrm-fast predict CKPT --source TASKS --out DIR``.

The tasks' test inputs need no outputs (task files whose tests have none, or a
``*_challenges.json`` with no solutions beside it). Every test input is predicted under K
augmentations and voted on exactly as ``eval`` does (``hrm_fast.evaluate``). A task the
checkpoint's puzzle table knows (by task id, ``hrm_fast.puzzle_rows``) uses its learned puzzle
ids and augmentation pool; any other task gets the blank id 0 and the seeded pool ``eval``
gives tasks without an id. Writes ``DIR/submission.json`` (ARC Prize format, validated before
it is written, atomically), ``DIR/predict.json`` (counts, and scores when every test output is
known: then the numbers ``eval`` gives) and ``DIR/predictions.png``.

Each test input gets two attempts: the top two vote groups. Where the model gave fewer than two
usable grids (one distinct answer, an empty grid, or no prediction at all when
``--time-budget`` ran out first) the missing attempt is a copy of the test input: a valid grid,
distinct from the model's answer where the model did not predict the identity, and the right
answer for tasks that change only a few cells is near it. Such fallbacks are counted.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrm_fast.checkpoint import refuse_non_finite
from hrm_fast.device import resolve_device
from hrm_fast.errors import DataError, UserError, WriteFailed
from hrm_fast.evaluate import _json_safe, build_items, load_for_inference, run_predictions
from hrm_fast.files import os_reason, prepare_dir, write_output
from hrm_fast.memory import check_inference_fits, num_puzzle_ids
from hrm_fast.scoring import DEFAULT_PASS_K, score_tasks, summarise, vote
from hrm_fast.submission import ATTEMPTS, is_answer_grid, write_submission


@dataclass
class PredictionSet:
    """The test pairs to answer, laid out the way ``build_items`` and ``score_tasks`` read an
    ``ArcDataset``'s held-out split: task e's test pairs are bank rows ``eval_pairs[e]``."""

    bank: object  # GridBank; an unknown output is 0x0
    eval_task_ids: list[str]
    eval_pairs: list[np.ndarray]
    eval_task_puzzle: np.ndarray  # [E] 0 where the table knows the task, -1 where it does not
    n_aug: int
    known_outputs: list[bool]  # [E] every test output of task e is known

    @classmethod
    def from_tasks(cls, tasks, canvas: int, known_ids, n_aug: int) -> PredictionSet:
        from hrm_fast.data import GridBank

        pairs, eval_pairs = [], []
        for t in tasks:
            eval_pairs.append(np.arange(len(pairs), len(pairs) + len(t.test_pairs)))
            pairs.extend(t.test_pairs)
        return cls(
            bank=GridBank.from_pairs(pairs, canvas),
            eval_task_ids=[t.id for t in tasks],
            eval_pairs=eval_pairs,
            eval_task_puzzle=np.array([0 if t.id in known_ids else -1 for t in tasks], np.int64),
            n_aug=n_aug,
            known_outputs=[t.has_test_outputs for t in tasks],
        )


def _check_source(source: str) -> None:
    from hrm_fast.arc_files import BUILTIN_SOURCES, split_sources

    try:
        parts = split_sources(source)
    except DataError as e:
        raise UserError(f"--source: {e.msg}") from None
    for part in parts:
        if part not in BUILTIN_SOURCES and not Path(part).exists():
            raise UserError(f"--source {part}: no such file or directory")


def answers(pset: PredictionSet, items, grids, q_prob) -> tuple[dict, dict]:
    """The submission (task id -> [{attempt_1, attempt_2}] per test input) from the votes of
    the items predicted so far, and counts of what it holds."""
    by_pair: dict[int, list[int]] = {}
    for i in range(len(grids)):
        by_pair.setdefault(items[i].pair, []).append(i)
    sub: dict[str, list] = {}
    counts = {"n_tasks": 0, "n_test_inputs": 0, "n_unvoted": 0, "n_fallback_attempts": 0}
    for e, tid in enumerate(pset.eval_task_ids):
        entries = []
        for p in pset.eval_pairs[e]:
            idx = by_pair.get(int(p), [])
            groups = vote([grids[i] for i in idx], [q_prob[i] for i in idx])
            usable = [g.grid for g in groups if is_answer_grid(g.grid)][: len(ATTEMPTS)]
            counts["n_unvoted"] += not idx
            counts["n_fallback_attempts"] += len(ATTEMPTS) - len(usable)
            fallback = pset.bank.pair(int(p))[0]  # the test input
            while len(usable) < len(ATTEMPTS):
                usable.append(fallback)
            entries.append({a: g.tolist() for a, g in zip(ATTEMPTS, usable, strict=True)})
            counts["n_test_inputs"] += 1
        sub[tid] = entries
        counts["n_tasks"] += 1
    return sub, counts


def _render(pset: PredictionSet, sub: dict, n_tasks: int, path: Path) -> Path | None:
    from hrm_fast.render import render_tasks

    rows = []
    for e, tid in enumerate(pset.eval_task_ids[:n_tasks]):
        for i, p in enumerate(pset.eval_pairs[e]):
            inp, out = pset.bank.pair(int(p))
            truth = out if out.size else None
            attempts = [np.array(sub[tid][i][a], np.uint8) for a in ATTEMPTS]
            verdicts = {}
            if truth is not None:
                for name, g in zip(("attempt 1", "attempt 2"), attempts, strict=True):
                    verdicts[name] = g.shape == truth.shape and bool(np.array_equal(g, truth))
            rows.append(
                {"task_id": tid, "input": inp, "attempt 1": attempts[0],
                 "attempt 2": attempts[1], "truth": truth, "verdicts": verdicts}
            )  # fmt: skip
    if not rows:
        return None
    return render_tasks(rows, path, columns=("input", "attempt 1", "attempt 2", "truth"))


def predict_tasks(
    checkpoint,
    source: str,
    out,
    n_aug: int = 8,
    time_budget: float | None = None,
    batch_size: int = 32,
    render: int = 4,
    device="auto",
    quiet: bool = False,
) -> dict:
    """Answer every test input of ``source``'s tasks; returns the predict.json dict (with
    ``paths``). ``time_budget`` (minutes) stops voting when it runs out: every test input
    still gets two attempts."""
    from hrm_fast.arc_files import load_tasks
    from hrm_fast.data import dataset_kind
    from hrm_fast.puzzle_rows import checkpoint_task_rows, table_rows

    if n_aug < 1:
        raise UserError(f"--n-aug must be >= 1, got {n_aug}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if render < 0:
        raise UserError(f"--render must be >= 0, got {render}")
    if time_budget is not None and not time_budget > 0:
        raise UserError(f"--time-budget must be > 0 minutes, got {time_budget}")
    t_start = time.perf_counter()
    _check_source(source)
    dev = resolve_device(device)
    model, cfg, payload, backend = load_for_inference(checkpoint, dev, quiet)
    refuse_non_finite(payload)
    if dataset_kind(cfg.data) != "arc":
        raise UserError(
            f"{payload['path']}: a {dataset_kind(cfg.data)} checkpoint; predict answers ARC "
            "tasks (score its held-out boards with hrm-fast eval)"
        )
    check_inference_fits(cfg, num_puzzle_ids(model), batch_size, dev, f"--batch-size {batch_size}")
    path = Path(payload["path"])
    tasks = load_tasks(source, "evaluation", cfg.data.canvas, need_outputs=False)
    if not tasks:
        raise UserError(f"--source {source}: no tasks")
    out_dir = prepare_dir(Path(out), "--out")  # before the work
    rows_of = checkpoint_task_rows(payload, cfg, table_rows(payload))
    pset = PredictionSet.from_tasks(tasks, cfg.data.canvas, rows_of, cfg.data.n_aug)
    rows = [rows_of.get(tid) for tid in pset.eval_task_ids]
    items = build_items(
        pset, n_aug, len(tasks), cfg.train.seed, rows=rows, by_round=time_budget is not None
    )
    k = max(1, min(n_aug, pset.n_aug))
    n_seen = sum(r is not None for r in rows)
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(
        f"hrm-fast predict: {path} | {len(tasks)} tasks ({n_seen} with learned puzzle ids, "
        f"{len(tasks) - n_seen} with the blank id), {len(items)} canvases (K={k} augmentations, "
        f"{cfg.model.halt_max_steps} ACT steps) | {dev.type} {backend}"
    )
    should_stop = None
    if time_budget is not None:
        deadline = t_start + time_budget * 60.0
        should_stop = lambda: time.perf_counter() >= deadline  # noqa: E731
    grids, q_prob = run_predictions(
        model, pset.bank, items, cfg, batch_size, dev, quiet=quiet, should_stop=should_stop
    )
    stopped_early = len(grids) < len(items)
    sub, counts = answers(pset, items, grids, q_prob)
    expected = {
        tid: len(pairs) for tid, pairs in zip(pset.eval_task_ids, pset.eval_pairs, strict=True)
    }
    try:
        sub_path = write_submission(out_dir / "submission.json", sub, expected)
    except ValueError as e:  # our own bug, never the user's input: say so in one line
        raise WriteFailed(f"{out_dir / 'submission.json'}: not written, invalid: {e}") from None

    report = {
        "checkpoint": str(path),
        "step": int(payload.get("step", 0)),
        "source": str(source),
        "n_aug": int(k),
        "halt_max_steps": cfg.model.halt_max_steps,
        "time_budget_minutes": time_budget,
        "stopped_early": stopped_early,
        "n_canvases": len(items),
        "n_canvases_predicted": len(grids),
        **counts,
        "n_tasks_with_puzzle_id": n_seen,
        "n_tasks_without_outputs": sum(not known for known in pset.known_outputs),
        "scored": False,
        "overall": None,
        "tasks_with_puzzle_id": [
            tid for tid, r in zip(pset.eval_task_ids, rows, strict=True) if r is not None
        ],
    }
    if all(pset.known_outputs) and not counts["n_unvoted"]:
        results = score_tasks(pset, items[: len(grids)], grids, q_prob)
        report["scored"] = True
        report["overall"] = summarise(results, DEFAULT_PASS_K)
        report["tasks"] = {r.task_id: r.to_dict() for r in results}  # as in eval.json
    png = None
    if render:
        try:
            png = _render(pset, sub, render, out_dir / "predictions.png")
        except OSError as e:
            raise WriteFailed(
                f"{out_dir / 'predictions.png'}: cannot write: {os_reason(e)} "
                f"({sub_path} was written)"
            ) from None
    report["paths"] = {
        "submission": str(sub_path),
        "json": str(out_dir / "predict.json"),
        "png": str(png) if png else None,
    }
    write_output(out_dir / "predict.json", json.dumps(_json_safe(report), indent=1), WriteFailed)
    if not quiet:
        print(summary(report))
    return report


def summary(report: dict) -> str:
    lines = [
        f"predict step {report['step']}: {report['n_tasks']} tasks, {report['n_test_inputs']} "
        f"test inputs ({report['n_tasks_with_puzzle_id']} tasks with learned puzzle ids), "
        f"K={report['n_aug']} augmentations"
    ]
    if report["stopped_early"]:
        lines.append(
            f"  --time-budget reached: {report['n_canvases_predicted']} of "
            f"{report['n_canvases']} canvases predicted, {report['n_unvoted']} test inputs "
            "without a vote"
        )
    if report["n_fallback_attempts"]:
        lines.append(
            f"  {report['n_fallback_attempts']} attempt(s) are a copy of the test input (the "
            "model gave fewer than two usable grids)"
        )
    o = report.get("overall")
    if not o and 0 < report["n_tasks_without_outputs"] < report["n_tasks"]:
        lines.append(
            f"  not scored: {report['n_tasks_without_outputs']} task(s) have unknown test outputs"
        )
    if o:
        lines.append(
            f"  solutions known: pass@1 {o['pass1']:.3f}  pass@2 {o['pass2']:.3f}  (tasks)  "
            f"pixel accuracy {o['pixel_accuracy']:.3f}"
        )
    paths = report["paths"]
    lines.append(
        f"  wrote {paths['submission']} and {paths['json']}"
        + (f" and {paths['png']}" if paths.get("png") else "")
    )
    return "\n".join(lines)


def main(args) -> int:
    predict_tasks(
        args.checkpoint,
        args.source,
        args.out,
        n_aug=args.n_aug,
        time_budget=args.time_budget,
        batch_size=args.batch_size,
        render=args.render,
        device=args.device,
    )
    return 0
