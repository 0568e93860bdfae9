"""The PNG writer: a hand-rolled decoder checks chunk layout, CRCs, the zlib stream, the image
size and pixel colours against the ARC palette."""

import struct
import zlib

import numpy as np
import pytest

from hrm_fast import render
from hrm_fast.render import PALETTE, encode_png, grid_panel, render_tasks, write_png

ARC_HEX = ["000000", "0074D9", "FF4136", "2ECC40", "FFDC00",
           "AAAAAA", "F012BE", "FF851B", "7FDBFF", "870C25"]  # fmt: skip


def decode_png(data: bytes) -> np.ndarray:
    """Minimal RGB8 decoder (filter type 0 only, as the writer emits)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "bad signature"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, f"CRC mismatch in {tag!r}"
        chunks.append((tag, body))
        pos += 12 + n
    assert pos == len(data), "trailing bytes after the last chunk"
    tags = [t for t, _ in chunks]
    assert tags[0] == b"IHDR" and tags[-1] == b"IEND" and b"IDAT" in tags
    w, h, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, ctype, comp, filt, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(b for t, b in chunks if t == b"IDAT"))
    assert len(raw) == h * (1 + 3 * w)
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all(), "unexpected filter type"
    return rows[:, 1:].reshape(h, w, 3)


def test_palette_is_standard_arc():
    assert [bytes(c).hex().upper() for c in PALETTE] == ARC_HEX


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (17, 5)])
def test_png_roundtrip(tmp_path, shape):
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    path = write_png(tmp_path / "x.png", img)
    np.testing.assert_array_equal(decode_png(path.read_bytes()), img)


def test_png_rejects_bad_shapes():
    for bad in (np.zeros((0, 3, 3), np.uint8), np.zeros((4, 4), np.uint8)):
        with pytest.raises(ValueError):
            encode_png(bad)


def test_grid_panel_cells_and_lines():
    grid = np.array([[0, 1, 2], [9, 8, 7]], np.uint8)
    cell = 4
    img = grid_panel(grid, cell)
    assert img.shape == (2 * (cell + 1) + 1, 3 * (cell + 1) + 1, 3)
    for r in range(2):
        for c in range(3):
            y, x = 1 + r * (cell + 1), 1 + c * (cell + 1)
            block = img[y : y + cell, x : x + cell]
            assert (block == PALETTE[grid[r, c]]).all(), (r, c)
    assert (img[0] == render.GRID_LINE).all() and (img[:, cell + 1] == render.GRID_LINE).all()


def test_render_tasks_layout_and_colours(tmp_path):
    cell = 5
    rows = [
        dict(task_id="0a1b", input=np.array([[1, 2], [3, 4]]), target=np.array([[5, 6, 7]]),
             prediction=np.array([[5, 6, 7]]), correct=True),
        dict(task_id="ff", input=np.array([[8], [9], [0]]), target=np.array([[2]]),
             prediction=np.zeros((0, 0), np.uint8), correct=False),
    ]  # fmt: skip
    path = render_tasks(rows, tmp_path / "eval.png", cell=cell)
    img = decode_png(path.read_bytes())
    label_w = max(render.text_image(r["task_id"]).shape[1] for r in rows) + render.GAP
    step = cell + 1
    keys = ("input", "target", "prediction")
    panel_w = [
        max([grid_panel(r[k], cell).shape[1] for r in rows] + [render.text_image(c).shape[1]])
        for k, c in zip(keys, render.CAPTIONS, strict=True)
    ]
    row0_h = 2 * step + 1 + 2 + render.BAR
    row1_h = 3 * step + 1 + 2 + render.BAR
    assert img.shape[1] == 2 * render.MARGIN + label_w + sum(panel_w) + 2 * render.GAP
    assert img.shape[0] == 2 * render.MARGIN + render.HEADER + row0_h + row1_h + render.ROW_GAP

    def cell_colour(y0, x0, r, c):  # centre pixel of cell (r, c) of a panel at (y0, x0)
        return tuple(img[y0 + 1 + r * step + cell // 2, x0 + 1 + c * step + cell // 2])

    y0, x_in = render.MARGIN + render.HEADER, render.MARGIN + label_w
    x_tg = x_in + panel_w[0] + render.GAP
    x_pr = x_tg + panel_w[1] + render.GAP
    for r, c, colour in [(0, 0, 1), (0, 1, 2), (1, 0, 3), (1, 1, 4)]:
        assert cell_colour(y0, x_in, r, c) == tuple(PALETTE[colour])
    for c, colour in enumerate([5, 6, 7]):
        assert cell_colour(y0, x_tg, 0, c) == tuple(PALETTE[colour])
        assert cell_colour(y0, x_pr, 0, c) == tuple(PALETTE[colour])
    y1 = y0 + row0_h + render.ROW_GAP
    for r, colour in enumerate([8, 9, 0]):
        assert cell_colour(y1, x_in, r, 0) == tuple(PALETTE[colour])
    # Verdict bars under the prediction: green for row 0, red for row 1.
    bar0 = img[y0 + step + 1 + 2 : y0 + step + 1 + 2 + render.BAR, x_pr]
    assert (bar0 == render.CORRECT).all()
    empty_h = cell + 2
    bar1 = img[y1 + empty_h + 2 : y1 + empty_h + 2 + render.BAR, x_pr]
    assert (bar1 == render.WRONG).all()
    assert tuple(img[0, 0]) == render.BACKGROUND
    # The label is drawn in the text colour somewhere left of the panels.
    assert (img[y0 : y0 + 12, render.MARGIN : x_in] == render.TEXT).all(-1).any()
    # Each column's caption is drawn above it, and the caption row holds nothing else.
    header = img[render.MARGIN : y0]
    for x0, caption in zip((x_in, x_tg, x_pr), render.CAPTIONS, strict=True):
        mask = render.text_image(caption)
        drawn = (header[: mask.shape[0], x0 : x0 + mask.shape[1]] == render.TEXT).all(-1)
        assert (drawn == mask).all(), caption
    assert (header[:, :x_in] == render.BACKGROUND).all()


def test_render_rejects_no_rows(tmp_path):
    with pytest.raises(ValueError):
        render_tasks([], tmp_path / "x.png")
