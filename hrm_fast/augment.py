"""ARC augmentation group: dihedral transforms, colour maps and translation.

Three views of the same transform, which must agree bit for bit:

* ``dihedral_np`` / ``augment_example_np``: HRM's per-example numpy pipeline
  (``dataset/common.py`` + ``build_arc_dataset.py``), the baseline and the definition.
* ``augment_batch_ref`` / ``invert_batch_ref``: the whole batch as gathers with computed
  source indices, on any device, with no host sync (the trainer's reference path).
* ``hrm_fast.kernels.augment``: the same index maps as one Triton launch.

Token encoding (docs/architecture.md): PAD = 0, EOS = 1, colour k -> k + 2; a grid of h x w
at offset (r0, c0) gets EOS on row r0 + h over its columns and on column c0 + w over its rows
(each only if inside the canvas); the corner stays PAD. Labels are the output canvas with PAD
replaced by IGNORE = -100.

Index map. For transform ``tid`` applied to an h x w grid ``a``, the result has shape
(w, h) if ``SWAP[tid]`` else (h, w), and ``result[i, j] = a[si, sj]`` with
``(p, q) = (j, i) if SWAP else (i, j)``, ``si = h-1-p if FLIP_R else p``,
``sj = w-1-q if FLIP_C else q``. This is what lets a kernel build any cell independently.
"""

from __future__ import annotations

import numpy as np
import torch

PAD = 0
EOS = 1
COLOUR_OFFSET = 2
IGNORE = -100
NUM_COLOURS = 10
NUM_DIHEDRAL = 8

# 0 id, 1 rot90, 2 rot180, 3 rot270, 4 fliplr, 5 flipud, 6 transpose, 7 anti-transpose.
DIHEDRAL_INVERSE = [0, 3, 2, 1, 4, 5, 6, 7]
# Source-index bits per transform id (see the module docstring).
SWAP = [0, 1, 0, 1, 0, 0, 1, 1]
FLIP_R = [0, 0, 1, 1, 0, 1, 0, 1]
FLIP_C = [0, 1, 1, 0, 1, 0, 0, 1]


def dihedral_np(arr: np.ndarray, tid: int) -> np.ndarray:
    """HRM's ``dihedral_transform`` (numpy ``rot90`` convention, counter-clockwise)."""
    if tid == 0:
        return arr
    if tid == 1:
        return np.rot90(arr, k=1)
    if tid == 2:
        return np.rot90(arr, k=2)
    if tid == 3:
        return np.rot90(arr, k=3)
    if tid == 4:
        return np.fliplr(arr)
    if tid == 5:
        return np.flipud(arr)
    if tid == 6:
        return arr.T
    if tid == 7:
        return np.fliplr(np.rot90(arr, k=1))
    raise ValueError(f"dihedral id must be in 0..7, got {tid}")


def _compose_table() -> list[list[int]]:
    # COMPOSE[a][b] = c such that dihedral(dihedral(x, a), b) == dihedral(x, c).
    probe = np.arange(6).reshape(2, 3)
    images = [dihedral_np(probe, t) for t in range(NUM_DIHEDRAL)]
    table = []
    for a in range(NUM_DIHEDRAL):
        row = []
        for b in range(NUM_DIHEDRAL):
            y = dihedral_np(images[a], b)
            row.append(next(c for c in range(8) if np.array_equal(images[c], y)))
        table.append(row)
    return table


COMPOSE = _compose_table()


def sample_pool(n_tasks: int, n_aug: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed augmentation pool: ``dihedral [T, N] int64``, ``colour_map [T, N, 10] uint8``.

    Drawn from ``np.random.default_rng(seed)``; entry 0 of every task is the identity.
    Colour maps keep 0 (black background) and permute 1..9. Unlike HRM we do not reject
    duplicate augmentations (HRM re-draws until the augmented puzzle's hash is new): with
    8 * 9! choices a duplicate among 1000 draws is rare and harmless for training.
    """
    if n_aug < 1:
        raise ValueError(f"n_aug must be >= 1, got {n_aug}")
    rng = np.random.default_rng(seed)
    dihedral = rng.integers(0, NUM_DIHEDRAL, size=(n_tasks, n_aug), dtype=np.int64)
    perms = rng.permuted(
        np.broadcast_to(np.arange(1, 10, dtype=np.uint8), (n_tasks, n_aug, 9)), axis=-1
    )
    colour_map = np.concatenate([np.zeros((n_tasks, n_aug, 1), np.uint8), perms], axis=-1)
    dihedral[:, 0] = 0
    colour_map[:, 0] = np.arange(NUM_COLOURS, dtype=np.uint8)
    return dihedral, colour_map


# ---------------------------------------------------------------------------------------------
# numpy per-example pipeline (HRM's dataset builder, used as the baseline)
# ---------------------------------------------------------------------------------------------


def encode_grid_np(grid: np.ndarray, offset: tuple[int, int], canvas: int) -> np.ndarray:
    """HRM's ``_pad_grid``: ``[canvas, canvas]`` int32 tokens of a raw-colour grid."""
    r0, c0 = int(offset[0]), int(offset[1])
    h, w = grid.shape
    out = np.full((canvas, canvas), PAD, dtype=np.int32)
    out[r0 : r0 + h, c0 : c0 + w] = grid.astype(np.int32) + COLOUR_OFFSET
    if r0 + h < canvas:
        out[r0 + h, c0 : c0 + w] = EOS
    if c0 + w < canvas:
        out[r0 : r0 + h, c0 + w] = EOS
    return out


def encode_pair_np(
    inp: np.ndarray, out: np.ndarray, offset: tuple[int, int], canvas: int
) -> tuple[np.ndarray, np.ndarray]:
    """One example in model format: ``(inputs int32 [S], labels int32 [S])``, PAD -> -100."""
    x = encode_grid_np(inp, offset, canvas).reshape(-1)
    y = encode_grid_np(out, offset, canvas).reshape(-1)
    y = np.where(y == PAD, IGNORE, y).astype(np.int32)
    return x, y


def augment_example_np(
    inp: np.ndarray,
    out: np.ndarray,
    tid: int,
    cmap: np.ndarray,
    offset: tuple[int, int],
    canvas: int,
) -> tuple[np.ndarray, np.ndarray]:
    """HRM's per-example pipeline: dihedral, colour map (``np.take``), translate, encode."""
    cmap = np.asarray(cmap)
    a = np.take(cmap, dihedral_np(inp, tid))
    b = np.take(cmap, dihedral_np(out, tid))
    return encode_pair_np(a, b, offset, canvas)


# ---------------------------------------------------------------------------------------------
# batched torch reference
# ---------------------------------------------------------------------------------------------


def _bits(tid: torch.Tensor):
    # SWAP / FLIP_R / FLIP_C as comparisons, not a table lookup: building a table with
    # torch.tensor(list, device=cuda) is a host->device copy, illegal under CUDA graph capture.
    t = tid.long()
    swap = (t == 1) | (t == 3) | (t == 6) | (t == 7)
    flip_r = (t == 2) | (t == 3) | (t == 5) | (t == 7)
    flip_c = (t == 1) | (t == 2) | (t == 4) | (t == 7)
    return swap, flip_r, flip_c


def _inverse_id(tid: torch.Tensor) -> torch.Tensor:
    # DIHEDRAL_INVERSE: rot90 <-> rot270, every other element is its own inverse.
    t = tid.long()
    return torch.where(t == 1, 3, torch.where(t == 3, 1, t))


def _encode_side(
    bank: torch.Tensor,
    pair: torch.Tensor,
    h: torch.Tensor,
    w: torch.Tensor,
    swap: torch.Tensor,
    flip_r: torch.Tensor,
    flip_c: torch.Tensor,
    colour_map: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
) -> torch.Tensor:
    # i, j: [B, S] coordinates relative to the offset; h, w etc.: [B, 1].
    canvas = bank.shape[-1]
    ht = torch.where(swap, w, h)  # transformed shape
    wt = torch.where(swap, h, w)
    row_ok = (i >= 0) & (i < ht)
    col_ok = (j >= 0) & (j < wt)
    inside = row_ok & col_ok
    eos = ((i == ht) & col_ok) | ((j == wt) & row_ok)
    p = torch.where(swap, j, i)
    q = torch.where(swap, i, j)
    si = torch.where(flip_r, h - 1 - p, p)
    sj = torch.where(flip_c, w - 1 - q, q)
    # Clamp so masked-out cells still gather in bounds.
    src = torch.where(inside, si * canvas + sj, 0)
    raw = bank.reshape(bank.shape[0], -1)[pair.long()].gather(1, src.long())
    colour = colour_map.long().gather(1, raw.long())
    tok = torch.where(inside, colour + COLOUR_OFFSET, torch.where(eos, EOS, PAD))
    return tok.to(torch.int32)


def augment_batch_ref(
    bank_inputs: torch.Tensor,
    bank_outputs: torch.Tensor,
    shapes: torch.Tensor,
    pair_idx: torch.Tensor,
    dihedral: torch.Tensor,
    colour_map: torch.Tensor,
    offset: torch.Tensor,
    canvas: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build a batch of augmented examples from the packed bank.

    bank_inputs/bank_outputs: uint8 ``[P, canvas, canvas]`` raw colours; shapes: ``[P, 4]``
    (h_in, w_in, h_out, w_out); pair_idx, dihedral: ``[B]`` ints; colour_map: ``[B, 10]``;
    offset: ``[B, 2]`` (row, col) of the transformed grids' top-left corner.
    Returns ``inputs int32 [B, S]`` and ``labels int32 [B, S]`` (PAD -> -100), S = canvas².
    """
    assert bank_inputs.shape[-1] == canvas and bank_inputs.shape[-2] == canvas
    dev = bank_inputs.device
    s = torch.arange(canvas * canvas, device=dev)
    r = (s // canvas)[None]
    c = (s % canvas)[None]
    off = offset.long()
    i = r - off[:, 0:1]
    j = c - off[:, 1:2]
    shp = shapes.long()[pair_idx.long()]  # [B, 4]
    swap, flip_r, flip_c = (x[:, None] for x in _bits(dihedral))
    args = (swap, flip_r, flip_c, colour_map, i, j)
    inputs = _encode_side(bank_inputs, pair_idx, shp[:, 0:1], shp[:, 1:2], *args)
    out_tok = _encode_side(bank_outputs, pair_idx, shp[:, 2:3], shp[:, 3:4], *args)
    labels = torch.where(out_tok == PAD, IGNORE, out_tok).to(torch.int32)
    return inputs, labels


def random_offsets(
    shapes_sel: torch.Tensor, dihedral: torch.Tensor, canvas: int, translate: bool
) -> torch.Tensor:
    """Translation offsets ``[B, 2]`` int64, uniform in HRM's range, drawn on device.

    Rows in ``[0, canvas - max(h_in', h_out')]``, columns likewise, where ' is the shape after
    the dihedral transform. Uses ``torch.rand`` with the default generator (no host sync).
    """
    shp = shapes_sel.long()
    b = shp.shape[0]
    if not translate:  # a config switch, not data: safe to branch on
        return torch.zeros(b, 2, dtype=torch.long, device=shp.device)
    swap = _bits(dihedral)[0]
    h_max = torch.maximum(shp[:, 0], shp[:, 2])
    w_max = torch.maximum(shp[:, 1], shp[:, 3])
    rows = torch.where(swap, w_max, h_max)
    cols = torch.where(swap, h_max, w_max)
    span = torch.stack([canvas - rows, canvas - cols], dim=1)  # inclusive upper bound
    u = torch.rand(b, 2, device=shp.device)
    off = (u * (span + 1).to(u.dtype)).long()
    return torch.minimum(off, span)  # guard the u -> 1 rounding edge


def crop_canvas(tokens: torch.Tensor, canvas: int) -> torch.Tensor:
    """Predicted grid shape ``[B, 2]`` int32 (h, w) read from the top-left corner.

    width = number of leading colour tokens (2..11) in row 0, height = number of leading
    colour tokens in column 0. This simplifies HRM's ``_crop`` (largest EOS-free rectangle
    from the corner): both agree on any well-formed canvas at offset 0 (a rectangle of
    colours closed by EOS / the canvas edge), and this one is a batched op with no loops.
    """
    t = tokens.reshape(tokens.shape[0], canvas, canvas)
    is_colour = (t >= COLOUR_OFFSET) & (t < COLOUR_OFFSET + NUM_COLOURS)
    w = torch.cumprod(is_colour[:, 0, :].to(torch.int32), dim=1).sum(1)
    h = torch.cumprod(is_colour[:, :, 0].to(torch.int32), dim=1).sum(1)
    return torch.stack([h, w], dim=1).to(torch.int32)


def inverse_colour_map(colour_map: torch.Tensor) -> torch.Tensor:
    """``inv[b, colour_map[b, k]] = k`` (uint8 ``[B, 10]``)."""
    cm = colour_map.long()
    k = torch.arange(NUM_COLOURS, device=cm.device).expand_as(cm)
    return torch.zeros_like(cm).scatter(1, cm, k).to(torch.uint8)


def invert_batch_ref(
    pred_tokens: torch.Tensor,
    dihedral: torch.Tensor,
    colour_map: torch.Tensor,
    canvas: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Undo an augmentation on predictions made at offset 0.

    crop (``crop_canvas``) -> inverse dihedral -> inverse colour map. Returns
    ``grids uint8 [B, canvas, canvas]`` (raw colours, zero outside the grid) and
    ``shapes int32 [B, 2]`` (h, w) in the original orientation. Non-colour tokens inside the
    cropped rectangle (possible only for ill-formed predictions) decode as colour 0.
    """
    b = pred_tokens.shape[0]
    dev = pred_tokens.device
    tok = pred_tokens.reshape(b, canvas * canvas).long()
    crop = crop_canvas(tok, canvas).long()
    hp, wp = crop[:, 0:1], crop[:, 1:2]  # predicted (transformed) shape
    swap, flip_r, flip_c = (x[:, None] for x in _bits(_inverse_id(dihedral)))
    h = torch.where(swap, wp, hp)  # original shape (the inverse swaps iff the forward does)
    w = torch.where(swap, hp, wp)
    s = torch.arange(canvas * canvas, device=dev)
    r = (s // canvas)[None]
    c = (s % canvas)[None]
    inside = (r < h) & (c < w)
    p = torch.where(swap, c, r)
    q = torch.where(swap, r, c)
    si = torch.where(flip_r, hp - 1 - p, p)
    sj = torch.where(flip_c, wp - 1 - q, q)
    src = torch.where(inside, si * canvas + sj, 0)
    colour = (tok.gather(1, src) - COLOUR_OFFSET).clamp(0, NUM_COLOURS - 1)
    raw = inverse_colour_map(colour_map).long().gather(1, colour)
    grids = torch.where(inside, raw, 0).to(torch.uint8).reshape(b, canvas, canvas)
    return grids, torch.cat([h, w], dim=1).to(torch.int32)
