"""Dependency-free PNG rendering of ARC predictions (numpy + zlib + struct).

``render_tasks(rows, path)`` draws one row per test pair: input | target | prediction, in the
standard ARC palette, with thin grid lines, a gap between panels, column captions on top, the
task id in a tiny bitmap font on the left, and a green (correct) / red (incorrect) bar under
the prediction.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from hrm_fast.files import atomic_write

# Standard ARC palette (colours 0-9).
PALETTE = np.array(
    [
        [0x00, 0x00, 0x00],  # 0 black
        [0x00, 0x74, 0xD9],  # 1 blue
        [0xFF, 0x41, 0x36],  # 2 red
        [0x2E, 0xCC, 0x40],  # 3 green
        [0xFF, 0xDC, 0x00],  # 4 yellow
        [0xAA, 0xAA, 0xAA],  # 5 grey
        [0xF0, 0x12, 0xBE],  # 6 magenta
        [0xFF, 0x85, 0x1B],  # 7 orange
        [0x7F, 0xDB, 0xFF],  # 8 light blue
        [0x87, 0x0C, 0x25],  # 9 maroon
    ],
    dtype=np.uint8,
)
BACKGROUND = (255, 255, 255)
GRID_LINE = (85, 85, 85)
TEXT = (40, 40, 40)
CORRECT = (0x2E, 0xCC, 0x40)
WRONG = (0xFF, 0x41, 0x36)

GAP = 14  # between panels
ROW_GAP = 18  # between rows
BAR = 5  # correct/incorrect bar height
MARGIN = 10
GLYPH = 2  # bitmap-font pixel size
CAPTIONS = ("input", "target", "prediction")
HEADER = 5 * GLYPH + 8  # caption row above the panels

# 3x5 bitmap font: enough for ARC task ids (hex), "#" separators and the column captions.
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", "a": "010101111101101", "b": "110101110101110",
    "c": "011100100100011", "d": "110101101101110", "e": "111100110100111",
    "f": "111100110100100", "#": "101111101111101", "-": "000000111000000",
    "_": "000000000000111", ".": "000000000000010", " ": "000000000000000",
    "g": "011100101101011", "i": "111010010010111", "k": "101101110101101",
    "n": "110101101101101", "o": "010101101101010", "p": "110101110100100",
    "r": "110101110101101", "s": "011100010001110", "t": "111010010010010",
    "u": "101101101101111", "m": "101111111101101", "h": "101101111101101",
    "l": "100100100100111", "w": "101101111111101", "y": "101101010010010",
}  # fmt: skip
_UNKNOWN = "111101101101111"


# --------------------------------------------------------------------------- PNG


def _chunk(tag: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + tag
        + data
        + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    )


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an ``[H, W, 3]`` uint8 image (RGB8, filter 0 on every row)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"expected a non-empty [H, W, 3] image, got {rgb.shape}")
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit, truecolour, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    path = Path(path)
    data = encode_png(rgb)
    atomic_write(path, lambda f: f.write(data))  # a failed write leaves no partial PNG
    return path


# --------------------------------------------------------------------------- drawing


def grid_panel(grid: np.ndarray, cell: int) -> np.ndarray:
    """``[h*cell + h+1, w*cell + w+1, 3]`` image of a grid: palette cells, 1 px grid lines.

    An empty grid (a prediction with no cells) draws as a small hatched box.
    """
    grid = np.asarray(grid)
    h, w = grid.shape if grid.ndim == 2 else (0, 0)
    if h == 0 or w == 0:
        s = cell + 2
        img = np.empty((s, s, 3), np.uint8)
        img[:] = BACKGROUND
        img[[0, -1], :] = GRID_LINE
        img[:, [0, -1]] = GRID_LINE
        idx = np.arange(s)
        img[idx, idx] = WRONG  # a cross: nothing was predicted
        img[idx, s - 1 - idx] = WRONG
        return img
    step = cell + 1
    img = np.empty((h * step + 1, w * step + 1, 3), np.uint8)
    img[:] = GRID_LINE
    colours = PALETTE[np.clip(grid.astype(np.int64), 0, 9)]  # [h, w, 3]
    block = np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1)  # [h*cell, w*cell, 3]
    rows = (np.arange(h)[:, None] * step + 1 + np.arange(cell)[None]).reshape(-1)
    cols = (np.arange(w)[:, None] * step + 1 + np.arange(cell)[None]).reshape(-1)
    img[np.ix_(rows, cols)] = block
    return img


def text_image(text: str, scale: int = GLYPH) -> np.ndarray:
    """Boolean ``[5*scale, ...]`` mask of ``text`` in the 3x5 font (lower-cased)."""
    glyphs = []
    for ch in text.lower():
        bits = np.array([int(b) for b in _FONT.get(ch, _UNKNOWN)], bool).reshape(5, 3)
        glyphs += [bits, np.zeros((5, 1), bool)]
    mask = np.concatenate(glyphs, axis=1) if glyphs else np.zeros((5, 0), bool)
    return np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)


def _paste(canvas: np.ndarray, img: np.ndarray, y: int, x: int) -> None:
    canvas[y : y + img.shape[0], x : x + img.shape[1]] = img


def _cell_size(rows: list[dict], columns=CAPTIONS) -> int:
    dims = [
        max(np.asarray(r[k]).shape or (1,)) for r in rows for k in columns if r.get(k) is not None
    ]
    biggest = max([d for d in dims if d > 0] or [1])
    return int(np.clip(200 // biggest, 6, 20))


def render_tasks(
    rows: list[dict], path: str | Path, cell: int | None = None, columns=CAPTIONS
) -> Path:
    """Draw ``rows`` (one per test pair) to a PNG at ``path``.

    Each row: ``{"task_id": str, "input": grid, "target": grid, "prediction": grid,
    "correct": bool}``; grids are 2-D arrays of colours 0-9 (the prediction may be empty).
    Other ``columns`` name the row keys drawn instead; a row's ``"verdicts": {column: bool}``
    puts a green / red bar under those columns, and a None grid leaves its panel blank.
    Returns the path.
    """
    return write_png(path, tasks_image(rows, cell, columns))


def _verdicts(row: dict, columns) -> dict:
    if "verdicts" in row:
        return row["verdicts"]
    return {"prediction": row.get("correct")} if "prediction" in columns else {}


def tasks_image(rows: list[dict], cell: int | None = None, columns=CAPTIONS) -> np.ndarray:
    """The ``[H, W, 3]`` uint8 image ``render_tasks`` writes (rows as there)."""
    if not rows:
        raise ValueError("render_tasks: no rows to draw")
    columns = tuple(columns)
    n_col = len(columns)
    blank = np.zeros((0, 0, 3), np.uint8)
    cell = cell or _cell_size(rows, columns)
    labels = [text_image(str(r.get("task_id", ""))) for r in rows]
    label_w = max(m.shape[1] for m in labels) + GAP
    drawn = []
    for r in rows:
        panels = [grid_panel(r[k], cell) if r.get(k) is not None else blank for k in columns]
        drawn.append(panels)
    captions = [text_image(c) for c in columns]
    panel_w = [max([p[i].shape[1] for p in drawn] + [captions[i].shape[1]]) for i in range(n_col)]
    width = MARGIN * 2 + label_w + sum(panel_w) + (n_col - 1) * GAP
    heights = [max(p.shape[0] for p in panels) + 2 + BAR for panels in drawn]
    height = MARGIN * 2 + HEADER + sum(heights) + ROW_GAP * (len(rows) - 1)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = BACKGROUND
    x = MARGIN + label_w
    for caption, w in zip(captions, panel_w, strict=True):
        img[MARGIN : MARGIN + caption.shape[0], x : x + caption.shape[1]][caption] = TEXT
        x += w + GAP
    y = MARGIN + HEADER
    for r, panels, label, rh in zip(rows, drawn, labels, heights, strict=True):
        img[y : y + label.shape[0], MARGIN : MARGIN + label.shape[1]][label] = TEXT
        x = MARGIN + label_w
        verdicts = _verdicts(r, columns)
        for i, p in enumerate(panels):
            _paste(img, p, y, x)
            if verdicts.get(columns[i]) is not None:  # the bar spans the judged panel
                bar_y = y + p.shape[0] + 2
                colour = CORRECT if verdicts[columns[i]] else WRONG
                img[bar_y : bar_y + BAR, x : x + p.shape[1]] = colour
            x += panel_w[i] + GAP
        y += rh + ROW_GAP
    return img
