"""Evaluation of a Sudoku / maze checkpoint on its held-out test boards.

Boards are scored as they are (no augmentation, no voting): a board is solved when every cell
is predicted right (``boards.exact_match``), and the cells to fill (Sudoku blanks, maze open
cells) give the blank-cell accuracy. The model runs ACT steps up to the largest of
``act_steps`` (default: powers of two up to ``halt_max_steps``, then ``halt_max_steps``), and
the answer after each listed step is scored, so eval.json shows whether more reasoning steps
help. Steps beyond ``halt_max_steps`` run the same recursion further than training did. Held-out
boards are also scored by difficulty (rating, number of blanks).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from hrm_fast.boards import BoardDataset, exact_match
from hrm_fast.errors import UserError, WriteFailed
from hrm_fast.files import os_reason, prepare_dir, write_output

# The token of a cell the model has to fill: Sudoku blank, maze open cell (" ").
FILL_TOKEN = {"sudoku": 1, "maze": 2}
MAX_ACT_STEPS = 256


def parse_act_steps(text: str) -> tuple[int, ...]:
    """``"1,2,4,8"`` -> (1, 2, 4, 8); UserError naming --act-steps otherwise."""
    try:
        steps = tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError:
        raise UserError(f"--act-steps {text!r}: expected step counts like 1,2,4,8") from None
    if not steps or steps[0] < 1 or steps[-1] > MAX_ACT_STEPS:
        raise UserError(f"--act-steps {text!r}: every count must be in 1..{MAX_ACT_STEPS}")
    return steps


def default_act_steps(halt_max_steps: int) -> tuple[int, ...]:
    powers = [2**i for i in range(halt_max_steps.bit_length()) if 2**i <= halt_max_steps]
    return tuple(sorted(set(powers) | {halt_max_steps}))


@torch.no_grad()
def predict_boards(
    model,
    dataset: BoardDataset,
    act_steps: tuple[int, ...],
    batch_size: int,
    device,
    n_boards: int = 0,
) -> dict[int, np.ndarray]:
    """{steps: predicted tokens int32 ``[N, S]``} for the first ``n_boards`` held-out boards
    (0: all), after each count of ACT steps in ``act_steps`` (eval mode: no example halts
    before the largest)."""
    n, last = len(dataset.test_inputs), max(act_steps)
    n = min(n, n_boards) if n_boards else n
    preds = {k: np.zeros((n, dataset.seq_len), np.int32) for k in act_steps}
    was_training, saved_max = model.training, model.cfg.halt_max_steps
    model.eval()
    model.cfg.halt_max_steps = max(last, saved_max)  # eval halts at halt_max_steps
    try:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            batch = dataset.test_batch(start, stop, device)
            pad = batch_size - (stop - start)  # static batch shape, as in training
            if pad:
                batch = {k: torch.cat([v, v[:1].expand(pad, *v.shape[1:])]) for k, v in
                         batch.items()}  # fmt: skip
            carry = model.initial_carry(batch)
            for step in range(1, last + 1):
                carry, out = model(carry, batch)
                if step in preds:
                    tokens = out["logits"].argmax(-1).to(torch.int32)[: stop - start]
                    preds[step][start:stop] = tokens.cpu().numpy()
    finally:
        model.cfg.halt_max_steps = saved_max
        model.train(was_training)
    return preds


def score_boards(dataset: BoardDataset, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per board (the first ``len(pred)`` held-out boards): ``exact`` (bool), ``fill_correct``
    / ``fill_cells`` (cells to fill) and ``cells_correct`` (all cells)."""
    n = len(pred)
    labels = torch.as_tensor(dataset.test_labels[:n].astype(np.int64))
    p = torch.as_tensor(pred.astype(np.int64))
    fill = torch.as_tensor(dataset.test_inputs[:n] == FILL_TOKEN[dataset.kind])
    right = p == labels
    return {
        "exact": exact_match(p, labels).numpy(),
        "fill_correct": (right & fill).sum(1).numpy(),
        "fill_cells": fill.sum(1).numpy(),
        "cells_correct": right.sum(1).numpy(),
    }


def held_out_board_scores(
    model,
    dataset: BoardDataset,
    cfg,
    n_tasks: int,
    n_aug: int,
    batch_size: int,
    device,
    quiet=True,
    dp=None,
) -> dict | None:
    """The train loop's held-out score of a board run (``--eval-every``): the first
    ``n_tasks`` held-out boards (0: all) at the model's trained ACT depth, unaugmented
    (``n_aug`` does not apply). A board is one task with one test pair, so pass@1 = pass@2 =
    exact; ``pixel_accuracy`` is the blank-cell accuracy. Rank 0 scores; others get None."""
    if dp is not None and not dp.is_main:
        return None
    steps = cfg.model.halt_max_steps
    pred = predict_boards(model, dataset, (steps,), batch_size, device, n_tasks)[steps]
    rates = _rates(score_boards(dataset, pred))
    n = rates["n_boards"]
    exact, blank = rates["exact"], rates["blank_accuracy"]
    return {"pass1": exact, "pass2": exact, "pixel_accuracy": blank, "pair_pass1": exact,
            "pair_pass2": exact, "n_tasks": n, "n_test_pairs": n, "n_aug": 1}  # fmt: skip


def _rates(s: dict[str, np.ndarray], keep=None) -> dict:
    keep = np.ones(len(s["exact"]), bool) if keep is None else keep
    fill = int(s["fill_cells"][keep].sum())
    return {
        "n_boards": int(keep.sum()),
        "exact": float(s["exact"][keep].mean()) if keep.any() else float("nan"),
        "blank_accuracy": float(s["fill_correct"][keep].sum() / fill) if fill else float("nan"),
    }


def difficulty_buckets(values: np.ndarray, max_buckets: int = 6) -> list[tuple[int, int]]:
    """Inclusive ``(low, high)`` ranges covering ``values``: one per distinct value when there
    are few, else quantile ranges."""
    distinct = np.unique(values)
    if len(distinct) <= max_buckets:
        return [(int(v), int(v)) for v in distinct]
    edges = np.unique(np.quantile(values, np.linspace(0, 1, max_buckets + 1)).round())
    ranges, low = [], int(distinct[0])
    for e in edges[1:]:
        high = int(e)
        if high >= low:
            ranges.append((low, high))
            low = high + 1
    return ranges


def _by(values: np.ndarray, s: dict) -> list[dict]:
    out = []
    for low, high in difficulty_buckets(values):
        keep = (values >= low) & (values <= high)
        if keep.any():
            out.append({"low": low, "high": high, **_rates(s, keep)})
    return out


def board_report(dataset: BoardDataset, preds: dict[int, np.ndarray], final: int) -> dict:
    """eval.json's scores: overall at ``final`` steps, by ACT steps, by rating and blanks."""
    scores = {k: score_boards(dataset, v) for k, v in preds.items()}
    s = scores[final]
    fill = FILL_TOKEN[dataset.kind]
    blanks = (dataset.test_inputs == fill).sum(1)
    overall = _rates(s)
    overall["cell_accuracy"] = float(s["cells_correct"].sum() / dataset.test_labels.size)
    return {
        "overall": overall,
        "by_act_steps": {str(k): _rates(v) for k, v in sorted(scores.items())},
        "by_rating": _by(np.asarray(dataset.test_ratings, np.int64), s),
        "by_blanks": _by(blanks, s),
        "exact_per_board": [bool(x) for x in s["exact"]],
    }


def evaluate_boards(
    model, cfg, payload: dict, dataset: BoardDataset, out=None, act_steps=None,
    batch_size: int = 32, render: int = 4, device="cpu", quiet: bool = False,
) -> dict:  # fmt: skip
    """Score ``model`` (from ``payload``'s checkpoint) on ``dataset``'s held-out boards; write
    eval.json (+ eval.png with ``render`` boards) into ``out`` (default: beside the
    checkpoint). Returns the eval.json dict."""
    from hrm_fast.checkpoint import default_out

    path = Path(payload["path"])
    n = len(dataset.test_inputs)
    if n == 0:
        raise UserError(f"{path}: the {dataset.kind} data has no held-out test boards")
    halt = cfg.model.halt_max_steps
    act_steps = tuple(act_steps) if act_steps else default_act_steps(halt)
    final = halt if halt in act_steps else max(act_steps)
    out_dir = prepare_dir(Path(out) if out else default_out(path), "--out")
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(
        f"hrm-fast eval: {path} | {n} held-out {dataset.kind} boards, ACT steps "
        f"{','.join(map(str, act_steps))} (trained with {halt}) | {torch.device(device).type}"
    )
    preds = predict_boards(model, dataset, act_steps, batch_size, device)
    report = {
        "checkpoint": str(path),
        "step": int(payload.get("step", 0)),
        "kind": dataset.kind,
        "boards": dataset.digest,
        "halt_max_steps": halt,
        "final_act_steps": final,
        **board_report(dataset, preds, final),
    }
    write_output(out_dir / "eval.json", json.dumps(report, indent=1), WriteFailed)
    png = None
    if render:
        from hrm_fast.board_render import render_boards

        pick = _render_pick(np.asarray(report["exact_per_board"]), render)
        try:
            png = render_boards(dataset, preds[final], pick, out_dir / "eval.png")
        except OSError as e:
            raise WriteFailed(
                f"{out_dir / 'eval.png'}: cannot write: {os_reason(e)} "
                f"({out_dir / 'eval.json'} was written)"
            ) from None
    report["paths"] = {"json": str(out_dir / "eval.json"), "png": str(png) if png else None}
    if not quiet:
        print(board_summary(report))
    return report


def _render_pick(exact: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` boards: solved ones first (half), then unsolved, then in order."""
    solved, wrong = np.flatnonzero(exact).tolist(), np.flatnonzero(~exact).tolist()
    first = solved[: (k + 1) // 2] + wrong[: k // 2]
    rest = [i for i in range(len(exact)) if i not in first]
    return sorted((first + rest)[:k])


def board_summary(report: dict) -> str:
    o = report["overall"]
    lines = [
        f"eval step {report['step']}: {o['n_boards']} held-out {report['kind']} boards, "
        f"{report['final_act_steps']} ACT steps",
        f"  exact {o['exact']:.3f}  blank-cell accuracy {o['blank_accuracy']:.3f}  "
        f"cell accuracy {o['cell_accuracy']:.3f}",
        "  by ACT steps: "
        + "  ".join(f"{k}: {v['exact']:.3f}" for k, v in report["by_act_steps"].items()),
    ]
    for name in ("rating", "blanks"):
        parts = report[f"by_{name}"]
        if len(parts) > 1:
            lines.append(
                f"  by {name}: "
                + "  ".join(
                    f"{p['low']}{'' if p['low'] == p['high'] else '-' + str(p['high'])}: "
                    f"{p['exact']:.3f} (n={p['n_boards']})"
                    for p in parts
                )
            )
    paths = report.get("paths", {})
    lines.append(
        f"  wrote {paths.get('json')}" + (f" and {paths['png']}" if paths.get("png") else "")
    )
    return "\n".join(lines)
