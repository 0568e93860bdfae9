"""PNG pictures of Sudoku and maze predictions: one row per board, input | prediction | truth.

Sudoku: digits in cells, box lines thicker; givens in black, digits the model filled in blue,
wrong digits in red on a pink cell. Maze: walls dark, open cells white, start green, goal red,
the path in blue, and in the prediction a cell whose path / no-path disagrees with the truth in
red. A green / red bar under the prediction says whether the board is solved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hrm_fast import maze, sudoku
from hrm_fast.render import (
    BACKGROUND,
    CORRECT,
    GAP,
    GRID_LINE,
    MARGIN,
    ROW_GAP,
    TEXT,
    WRONG,
    text_image,
    write_png,
)  # fmt: skip

COLUMNS = ("input", "prediction", "truth")
GIVEN = (20, 20, 20)
FILLED = (0x00, 0x55, 0xCC)
WRONG_CELL = (0xFF, 0xD6, 0xD6)
MAZE_COLOURS = np.array(
    [[60, 60, 60], [255, 255, 255], [0x2E, 0xCC, 0x40], [0xFF, 0x41, 0x36], [0x00, 0x74, 0xD9]],
    np.uint8,
)  # "# SGo": wall, open, start, goal, path
BAR = 5


def sudoku_panel(given: np.ndarray, digits: np.ndarray, wrong: np.ndarray | None, cell: int = 22):
    """A Sudoku ``[n, n]`` as an image: ``digits`` 0-9 (0 = empty), ``given`` marks the puzzle's
    own digits, ``wrong`` the cells drawn as wrong (or None)."""
    n = digits.shape[0]
    box = int(round(n**0.5))
    step = cell + 1
    img = np.empty((n * step + 1, n * step + 1, 3), np.uint8)
    img[:] = BACKGROUND
    for i in range(n + 1):  # grid lines, box lines doubled inward
        img[i * step, :] = GRID_LINE
        img[:, i * step] = GRID_LINE
        if i % box == 0:
            img[min(i * step + 1, img.shape[0] - 1), :] = GRID_LINE
            img[:, min(i * step + 1, img.shape[1] - 1)] = GRID_LINE
    scale = max(1, (cell - 4) // 5)
    for r in range(n):
        for c in range(n):
            y, x = r * step + 2, c * step + 2
            bad = wrong is not None and wrong[r, c]
            if bad:
                img[y : y + cell - 1, x : x + cell - 1] = WRONG_CELL
            if digits[r, c] == 0:
                continue
            glyph = text_image(str(int(digits[r, c])), scale)[:, : 3 * scale]
            gy, gx = y + (cell - 1 - glyph.shape[0]) // 2, x + (cell - 1 - glyph.shape[1]) // 2
            colour = WRONG if bad else (GIVEN if given[r, c] else FILLED)
            img[gy : gy + glyph.shape[0], gx : gx + glyph.shape[1]][glyph] = colour
    return img


def maze_panel(board: np.ndarray, wrong: np.ndarray | None, cell: int = 6) -> np.ndarray:
    """A maze ``[n, n]`` of CHARSET indices as an image; ``wrong`` cells drawn red."""
    colours = MAZE_COLOURS[np.clip(board, 0, len(MAZE_COLOURS) - 1)].copy()
    if wrong is not None:
        colours[wrong] = WRONG
    return np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1)


def board_panels(kind: str, side: int, inp, pred, truth) -> list[np.ndarray]:
    """The three panels of one board from its tokens ``[S]``."""
    shape = (side, side)
    inp, pred, truth = (np.asarray(t).reshape(shape) for t in (inp, pred, truth))
    wrong = pred != truth
    if kind == "sudoku":
        given = inp != 1  # token 1 = blank
        d_in, d_pred, d_truth = (sudoku.decode(np.clip(t, 1, None)) for t in (inp, pred, truth))
        return [
            sudoku_panel(given, d_in, None),
            sudoku_panel(given, d_pred, wrong),
            sudoku_panel(given, d_truth, None),
        ]
    return [
        maze_panel(maze.decode(inp), None),
        maze_panel(maze.decode(pred), wrong),
        maze_panel(maze.decode(truth), None),
    ]


def boards_image(kind: str, side: int, rows: list[tuple]) -> np.ndarray:
    """``rows``: (label, input tokens, predicted tokens, true tokens) per board."""
    if not rows:
        raise ValueError("render_boards: no boards to draw")
    drawn = [board_panels(kind, side, *r[1:]) for r in rows]
    labels = [text_image(str(r[0])) for r in rows]
    captions = [text_image(c) for c in COLUMNS]
    label_w = max(m.shape[1] for m in labels) + GAP
    pw, ph = drawn[0][0].shape[1], drawn[0][0].shape[0]
    header = captions[0].shape[0] + 8
    width = 2 * MARGIN + label_w + 3 * pw + 2 * GAP
    height = 2 * MARGIN + header + len(rows) * (ph + 2 + BAR) + (len(rows) - 1) * ROW_GAP
    img = np.empty((height, width, 3), np.uint8)
    img[:] = BACKGROUND
    for i, cap in enumerate(captions):
        x = MARGIN + label_w + i * (pw + GAP)
        img[MARGIN : MARGIN + cap.shape[0], x : x + cap.shape[1]][cap] = TEXT
    y = MARGIN + header
    for (_, _, pred, truth), panels, label in zip(rows, drawn, labels, strict=True):
        img[y : y + label.shape[0], MARGIN : MARGIN + label.shape[1]][label] = TEXT
        for i, p in enumerate(panels):
            x = MARGIN + label_w + i * (pw + GAP)
            img[y : y + ph, x : x + pw] = p
        solved = bool((np.asarray(pred) == np.asarray(truth)).all())
        x = MARGIN + label_w + pw + GAP
        img[y + ph + 2 : y + ph + 2 + BAR, x : x + pw] = CORRECT if solved else WRONG
        y += ph + 2 + BAR + ROW_GAP
    return img


def render_boards(dataset, pred: np.ndarray, indices: list[int], path: str | Path) -> Path:
    """Draw held-out boards ``indices`` of ``dataset`` with predictions ``pred [N, S]``."""
    rows = [(f"#{i}", dataset.test_inputs[i], pred[i], dataset.test_labels[i]) for i in indices]
    return write_png(path, boards_image(dataset.kind, dataset.side, rows))
