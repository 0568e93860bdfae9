"""Augmentation kernels: build / invert a whole batch of ARC examples in one launch each.

``augment_batch`` gathers every canvas cell of every example straight from the packed grid
bank: each program owns one example x a block of cells and computes the source cell through
the dihedral index map (``hrm_fast.grid_transforms`` docstring), then applies the colour map, the
translation and the EOS / PAD encoding. ``invert_batch`` crops a prediction made at offset 0,
applies the inverse dihedral and the inverse colour map. Both are bit-identical to the torch
references ``augment_batch_ref`` / ``invert_batch_ref`` at the end of this file (integer
outputs, so there is no autograd).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import MEMORY_BOUND_WARPS
from .aot import AotSpec, LaunchShape
from .dispatch import use_triton

# Token encoding: PAD, EOS, colour k -> k + COLOUR_OFFSET; labels' PAD -> IGNORE.
PAD = 0
EOS = 1
COLOUR_OFFSET = 2
IGNORE = -100
NUM_COLOURS = 10

BLOCK = 256  # canvas cells per program: 4 programs per 30x30 example


@triton.jit
def _bits(tid):
    # SWAP / FLIP_R / FLIP_C tables of hrm_fast.grid_transforms, as arithmetic on the id.
    swap = (tid == 1) | (tid == 3) | (tid == 6) | (tid == 7)
    flip_r = (tid == 2) | (tid == 3) | (tid == 5) | (tid == 7)
    flip_c = (tid == 1) | (tid == 2) | (tid == 4) | (tid == 7)
    return swap, flip_r, flip_c


@triton.jit
def _encode_side(
    bank_ptr, cmap_ptr, pair, b, h, w, swap, flip_r, flip_c, i, j, CANVAS: tl.constexpr
):
    ht = tl.where(swap, w, h)
    wt = tl.where(swap, h, w)
    row_ok = (i >= 0) & (i < ht)
    col_ok = (j >= 0) & (j < wt)
    inside = row_ok & col_ok
    eos = ((i == ht) & col_ok) | ((j == wt) & row_ok)
    p = tl.where(swap, j, i)
    q = tl.where(swap, i, j)
    si = tl.where(flip_r, h - 1 - p, p)
    sj = tl.where(flip_c, w - 1 - q, q)
    src = tl.where(inside, si * CANVAS + sj, 0)  # in bounds even where masked
    raw = tl.load(bank_ptr + pair * (CANVAS * CANVAS) + src, mask=inside, other=0).to(tl.int32)
    colour = tl.load(cmap_ptr + b * 10 + raw, mask=inside, other=0).to(tl.int32)
    return tl.where(inside, colour + 2, tl.where(eos, 1, 0))


@triton.jit
def _augment_kernel(
    bank_in_ptr,
    bank_out_ptr,
    shapes_ptr,  # [P, 4] int32
    pair_ptr,  # [B]
    dihedral_ptr,  # [B]
    cmap_ptr,  # [B, 10]
    offset_ptr,  # [B, 2]
    inputs_ptr,  # [B, S] int32
    labels_ptr,  # [B, S] int32
    CANVAS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    s = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_canvas = s < CANVAS * CANVAS
    pair = tl.load(pair_ptr + b).to(tl.int64)
    tid = tl.load(dihedral_ptr + b).to(tl.int32)
    r0 = tl.load(offset_ptr + 2 * b).to(tl.int32)
    c0 = tl.load(offset_ptr + 2 * b + 1).to(tl.int32)
    h_in = tl.load(shapes_ptr + 4 * pair).to(tl.int32)
    w_in = tl.load(shapes_ptr + 4 * pair + 1).to(tl.int32)
    h_out = tl.load(shapes_ptr + 4 * pair + 2).to(tl.int32)
    w_out = tl.load(shapes_ptr + 4 * pair + 3).to(tl.int32)
    swap, flip_r, flip_c = _bits(tid)
    i = s // CANVAS - r0
    j = s % CANVAS - c0
    x = _encode_side(bank_in_ptr, cmap_ptr, pair, b, h_in, w_in, swap, flip_r, flip_c, i, j, CANVAS)
    y = _encode_side(
        bank_out_ptr, cmap_ptr, pair, b, h_out, w_out, swap, flip_r, flip_c, i, j, CANVAS
    )
    y = tl.where(y == 0, -100, y)
    base = b.to(tl.int64) * (CANVAS * CANVAS)
    tl.store(inputs_ptr + base + s, x, mask=in_canvas)
    tl.store(labels_ptr + base + s, y, mask=in_canvas)


@triton.jit
def _invert_kernel(
    pred_ptr,  # [B, S] integer tokens
    dihedral_ptr,  # [B]
    cmap_ptr,  # [B, 10]
    grids_ptr,  # [B, CANVAS, CANVAS] uint8
    shapes_ptr,  # [B, 2] int32
    CANVAS: tl.constexpr,
    SIDE: tl.constexpr,  # next power of two >= CANVAS
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    blk = tl.program_id(1)
    base = b.to(tl.int64) * (CANVAS * CANVAS)
    # Crop: leading colour tokens of row 0 (width) and column 0 (height).
    k = tl.arange(0, SIDE)
    t_row = tl.load(pred_ptr + base + k, mask=k < CANVAS, other=0).to(tl.int32)
    t_col = tl.load(pred_ptr + base + k * CANVAS, mask=k < CANVAS, other=0).to(tl.int32)
    row_stop = (k >= CANVAS) | (t_row < 2) | (t_row > 11)
    col_stop = (k >= CANVAS) | (t_col < 2) | (t_col > 11)
    wp = tl.min(tl.where(row_stop, k, SIDE), axis=0)
    hp = tl.min(tl.where(col_stop, k, SIDE), axis=0)
    tid = tl.load(dihedral_ptr + b).to(tl.int32)
    # The inverse swaps 1 <-> 3 and fixes every other element.
    tinv = tl.where(tid == 1, 3, tl.where(tid == 3, 1, tid))
    swap, flip_r, flip_c = _bits(tinv)
    h = tl.where(swap, wp, hp)
    w = tl.where(swap, hp, wp)
    s = blk * BLOCK + tl.arange(0, BLOCK)
    in_canvas = s < CANVAS * CANVAS
    r = s // CANVAS
    c = s % CANVAS
    inside = (r < h) & (c < w) & in_canvas
    p = tl.where(swap, c, r)
    q = tl.where(swap, r, c)
    si = tl.where(flip_r, hp - 1 - p, p)
    sj = tl.where(flip_c, wp - 1 - q, q)
    src = tl.where(inside, si * CANVAS + sj, 0)
    tok = tl.load(pred_ptr + base + src, mask=inside, other=2).to(tl.int32)
    colour = tl.minimum(tl.maximum(tok - 2, 0), 9)
    # Inverse colour map by search: raw = k such that cmap[k] == colour.
    kk = tl.arange(0, 16)
    cmap = tl.load(cmap_ptr + b * 10 + kk, mask=kk < 10, other=255).to(tl.int32)
    hit = cmap[None, :] == colour[:, None]
    raw = tl.sum(tl.where(hit, kk[None, :], 0), axis=1)
    out = tl.where(inside, raw, 0).to(tl.uint8)
    tl.store(grids_ptr + base + s, out, mask=in_canvas)
    if blk == 0:
        tl.store(shapes_ptr + 2 * b, h)
        tl.store(shapes_ptr + 2 * b + 1, w)


# ---------------------------------------------------------------------------------------------
# launchers (any device: CPU tensors run under TRITON_INTERPRET=1)
# ---------------------------------------------------------------------------------------------


def _launch_augment(
    kernel,
    bank_inputs,
    bank_outputs,
    shapes,
    pair_idx,
    dihedral,
    colour_map,
    offset,
    canvas,
    out,
):
    b = pair_idx.shape[0]
    if out is None:
        dev = bank_inputs.device
        out = (
            torch.empty(b, canvas * canvas, dtype=torch.int32, device=dev),
            torch.empty(b, canvas * canvas, dtype=torch.int32, device=dev),
        )
    inputs, labels = out
    grid = (b, triton.cdiv(canvas * canvas, BLOCK))
    kernel[grid](
        bank_inputs.contiguous(),
        bank_outputs.contiguous(),
        shapes.contiguous(),
        pair_idx.contiguous(),
        dihedral.contiguous(),
        colour_map.contiguous(),
        offset.contiguous(),
        inputs,
        labels,
        CANVAS=canvas,
        BLOCK=BLOCK,
        num_warps=MEMORY_BOUND_WARPS,
    )
    return inputs, labels


def _launch_invert(kernel, pred_tokens, dihedral, colour_map, canvas, out):
    b = pred_tokens.shape[0]
    if out is None:
        dev = pred_tokens.device
        out = (
            torch.empty(b, canvas, canvas, dtype=torch.uint8, device=dev),
            torch.empty(b, 2, dtype=torch.int32, device=dev),
        )
    grids, shapes = out
    grid = (b, triton.cdiv(canvas * canvas, BLOCK))
    kernel[grid](
        pred_tokens.contiguous(),
        dihedral.contiguous(),
        colour_map.contiguous(),
        grids,
        shapes,
        CANVAS=canvas,
        SIDE=triton.next_power_of_2(canvas),
        BLOCK=BLOCK,
        num_warps=MEMORY_BOUND_WARPS,
    )
    return grids, shapes


def _augment_fwd(
    bank_inputs, bank_outputs, shapes, pair_idx, dihedral, colour_map, offset, canvas, out=None
):
    """Launch ``_augment_kernel``; ``out`` = optional ``(inputs, labels)`` int32 buffers."""
    return _launch_augment(
        _augment_kernel,
        bank_inputs,
        bank_outputs,
        shapes,
        pair_idx,
        dihedral,
        colour_map,
        offset,
        canvas,
        out,
    )


def _invert_fwd(pred_tokens, dihedral, colour_map, canvas, out=None):
    """Launch ``_invert_kernel``; ``out`` = optional ``(grids uint8, shapes int32)`` buffers."""
    return _launch_invert(_invert_kernel, pred_tokens, dihedral, colour_map, canvas, out)


# ---------------------------------------------------------------------------------------------
# torch.library registration (integer outputs: no autograd)
# ---------------------------------------------------------------------------------------------


@torch.library.triton_op("hrm_fast::augment_batch", mutates_args=())
def _augment_op(
    bank_inputs: torch.Tensor,
    bank_outputs: torch.Tensor,
    shapes: torch.Tensor,
    pair_idx: torch.Tensor,
    dihedral: torch.Tensor,
    colour_map: torch.Tensor,
    offset: torch.Tensor,
    canvas: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_augment(
        torch.library.wrap_triton(_augment_kernel),
        bank_inputs,
        bank_outputs,
        shapes,
        pair_idx,
        dihedral,
        colour_map,
        offset,
        canvas,
        None,
    )


@torch.library.triton_op("hrm_fast::invert_batch", mutates_args=())
def _invert_op(
    pred_tokens: torch.Tensor, dihedral: torch.Tensor, colour_map: torch.Tensor, canvas: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_invert(
        torch.library.wrap_triton(_invert_kernel),
        pred_tokens,
        dihedral,
        colour_map,
        canvas,
        None,
    )


def augment_batch(
    bank_inputs, bank_outputs, shapes, pair_idx, dihedral, colour_map, offset, canvas
):
    """Same contract as ``augment_batch_ref``; Triton on CUDA."""
    if use_triton(bank_inputs):
        return torch.ops.hrm_fast.augment_batch(
            bank_inputs, bank_outputs, shapes, pair_idx, dihedral, colour_map, offset, canvas
        )
    return augment_batch_ref(
        bank_inputs, bank_outputs, shapes, pair_idx, dihedral, colour_map, offset, canvas
    )


def invert_batch(pred_tokens, dihedral, colour_map, canvas):
    """Same contract as ``invert_batch_ref``; Triton on CUDA."""
    if use_triton(pred_tokens):
        return torch.ops.hrm_fast.invert_batch(pred_tokens, dihedral, colour_map, canvas)
    return invert_batch_ref(pred_tokens, dihedral, colour_map, canvas)


# ---------------------------------------------------------------------------------------------
# torch reference (the definition the kernels match bit for bit; hrm_fast.grid_transforms checks it
# against HRM's numpy pipeline)
# ---------------------------------------------------------------------------------------------


def dihedral_bits(tid: torch.Tensor):
    # SWAP / FLIP_R / FLIP_C as comparisons, not a table lookup: building a table with
    # torch.tensor(list, device=cuda) is a host->device copy, illegal under CUDA graph capture.
    t = tid.long()
    swap = (t == 1) | (t == 3) | (t == 6) | (t == 7)
    flip_r = (t == 2) | (t == 3) | (t == 5) | (t == 7)
    flip_c = (t == 1) | (t == 2) | (t == 4) | (t == 7)
    return swap, flip_r, flip_c


def inverse_dihedral(tid: torch.Tensor) -> torch.Tensor:
    # DIHEDRAL_INVERSE: rot90 <-> rot270, every other element is its own inverse.
    t = tid.long()
    return torch.where(t == 1, 3, torch.where(t == 3, 1, t))


def _encode_side_ref(
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
    swap, flip_r, flip_c = (x[:, None] for x in dihedral_bits(dihedral))
    args = (swap, flip_r, flip_c, colour_map, i, j)
    inputs = _encode_side_ref(bank_inputs, pair_idx, shp[:, 0:1], shp[:, 1:2], *args)
    out_tok = _encode_side_ref(bank_outputs, pair_idx, shp[:, 2:3], shp[:, 3:4], *args)
    labels = torch.where(out_tok == PAD, IGNORE, out_tok).to(torch.int32)
    return inputs, labels


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
    swap, flip_r, flip_c = (x[:, None] for x in dihedral_bits(inverse_dihedral(dihedral)))
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


# ---------------------------------------------------------------------------------------------
# ahead-of-time compile specs
# ---------------------------------------------------------------------------------------------


def aot_specs(shape: LaunchShape, target: str = "nvidia") -> list[AotSpec]:
    """Launch configs of the trainer (sampler: int64 indices, uint8 colour maps) and evaluator."""
    # One launch configuration for every target family (kernels-report: no spills on any).
    del target
    batch, canvas = shape.batch, shape.canvas
    nblk = triton.cdiv(canvas * canvas, BLOCK)
    aug_sig = {
        "bank_in_ptr": "*u8",
        "bank_out_ptr": "*u8",
        "shapes_ptr": "*i32",
        "pair_ptr": "*i64",
        "dihedral_ptr": "*i64",
        "cmap_ptr": "*u8",
        "offset_ptr": "*i64",
        "inputs_ptr": "*i32",
        "labels_ptr": "*i32",
        "CANVAS": "constexpr",
        "BLOCK": "constexpr",
    }
    inv_sig = {
        "pred_ptr": "*i32",
        "dihedral_ptr": "*i64",
        "cmap_ptr": "*u8",
        "grids_ptr": "*u8",
        "shapes_ptr": "*i32",
        "CANVAS": "constexpr",
        "SIDE": "constexpr",
        "BLOCK": "constexpr",
    }
    note = f"B={batch} canvas={canvas} S={canvas * canvas}"
    return [
        AotSpec(
            name="augment_batch",
            fn=_augment_kernel,
            signature=aug_sig,
            constexprs={"CANVAS": canvas, "BLOCK": BLOCK},
            num_warps=MEMORY_BOUND_WARPS,
            num_stages=1,
            grid=(batch, nblk),
            note=note,
        ),
        AotSpec(
            name="invert_batch",
            fn=_invert_kernel,
            signature=inv_sig,
            constexprs={"CANVAS": canvas, "SIDE": 32, "BLOCK": BLOCK},
            num_warps=MEMORY_BOUND_WARPS,
            num_stages=1,
            grid=(batch, nblk),
            note=note,
        ),
    ]
