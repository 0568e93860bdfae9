"""ARC augmentation group: dihedral transforms, colour maps and translation.

Three views of the same transform, which must agree bit for bit:

* ``dihedral_np`` / ``augment_example_np``: HRM's per-example numpy pipeline
  (``dataset/common.py`` + ``build_arc_dataset.py``), the baseline and the definition.
* ``augment_batch_ref`` / ``invert_batch_ref`` (defined in ``hrm_fast.kernels.augment``, beside
  the kernel): the whole batch as gathers with computed source indices, on any device, with no
  host sync (the trainer's reference path); the kernel: the same index maps as one launch.

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

from hrm_fast.kernels.augment import (  # the batched reference, beside its kernel
    COLOUR_OFFSET,
    EOS,
    IGNORE,
    NUM_COLOURS,
    PAD,
    augment_batch_ref,  # noqa: F401
    crop_canvas,  # noqa: F401
    dihedral_bits,
    inverse_colour_map,  # noqa: F401
    invert_batch_ref,  # noqa: F401
)

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
# translation
# ---------------------------------------------------------------------------------------------


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
    swap = dihedral_bits(dihedral)[0]
    h_max = torch.maximum(shp[:, 0], shp[:, 2])
    w_max = torch.maximum(shp[:, 1], shp[:, 3])
    rows = torch.where(swap, w_max, h_max)
    cols = torch.where(swap, h_max, w_max)
    span = torch.stack([canvas - rows, canvas - cols], dim=1)  # inclusive upper bound
    u = torch.rand(b, 2, device=shp.device)
    off = (u * (span + 1).to(u.dtype)).long()
    return torch.minimum(off, span)  # guard the u -> 1 rounding edge
