"""Held-out exact accuracy of a Sudoku checkpoint against difficulty (blanks) and ACT steps.

``python bench/board_difficulty.py RUN [--blanks 6,10,14,18,22] [--boards 200]``: for each
blank count, fresh generated 9x9 puzzles (one solution each, a seed the training set never
used) are scored as ``hrm-fast eval`` scores its held-out boards. Prints a markdown table.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hrm_fast import sudoku
from hrm_fast.board_eval import predict_boards, score_boards
from hrm_fast.boards import BoardDataset
from hrm_fast.evaluate import load_for_inference


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--blanks", default="6,10,14,18,22")
    p.add_argument("--boards", type=int, default=200)
    p.add_argument("--act-steps", default="1,2,4,8")
    p.add_argument("--seed", type=int, default=10_001)
    a = p.parse_args()
    model, cfg, payload, _ = load_for_inference(a.run, torch.device("cpu"))
    steps = tuple(int(s) for s in a.act_steps.split(","))
    print(f"checkpoint {payload['path']} (step {payload['step']})\n")
    print(
        "| blanks | boards | blank acc | exact | exact by ACT steps "
        + " ".join(map(str, steps))
        + " |"
    )
    print("|---|---|---|---|---|")
    for blanks in (int(b) for b in a.blanks.split(",")):
        s = sudoku.generate(a.boards, a.seed + blanks, min_blanks=blanks, max_blanks=blanks)
        data = BoardDataset.from_sudoku(s, s, augment=False)
        preds = predict_boards(model, data, steps, 50, "cpu")
        final = cfg.model.halt_max_steps
        row = score_boards(data, preds[final])
        by = " ".join(f"{score_boards(data, preds[k])['exact'].mean():.2f}" for k in steps)
        blank_acc = row["fill_correct"].sum() / row["fill_cells"].sum()
        print(
            f"| {blanks} | {len(s.puzzles)} | {blank_acc:.3f} | "
            f"**{np.mean(row['exact']):.3f}** | {by} |"
        )


if __name__ == "__main__":
    main()
