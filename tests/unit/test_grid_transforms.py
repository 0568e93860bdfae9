"""Augmentation group laws and the batched torch reference vs HRM's numpy pipeline."""

import numpy as np
import pytest
import torch

from hrm_fast.grid_transforms import (
    COMPOSE,
    DIHEDRAL_INVERSE,
    IGNORE,
    PAD,
    augment_batch_ref,
    augment_example_np,
    crop_canvas,
    dihedral_np,
    inverse_colour_map,
    invert_batch_ref,
    random_offsets,
    sample_pool,
)

# Independent definitions of the 8 elements, straight from numpy.
NUMPY_GROUP = [
    lambda a: a,
    lambda a: np.rot90(a, 1),
    lambda a: np.rot90(a, 2),
    lambda a: np.rot90(a, 3),
    lambda a: a[:, ::-1],
    lambda a: a[::-1, :],
    lambda a: a.T,
    lambda a: np.rot90(a, 1)[:, ::-1],
]
SHAPES = [(1, 1), (2, 3), (3, 2), (1, 5), (4, 7), (6, 6)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tid", range(8))
def test_dihedral_matches_numpy(tid, shape):
    a = np.arange(shape[0] * shape[1]).reshape(shape)
    np.testing.assert_array_equal(dihedral_np(a, tid), NUMPY_GROUP[tid](a))


@pytest.mark.parametrize("shape", [(2, 3), (5, 4)])
def test_group_laws(shape):
    a = np.arange(shape[0] * shape[1]).reshape(shape)
    images = [dihedral_np(a, t) for t in range(8)]
    # 8 distinct elements on a non-square, non-symmetric grid.
    keys = {(im.shape, im.tobytes()) for im in images}
    assert len(keys) == 8
    for t in range(8):
        np.testing.assert_array_equal(dihedral_np(images[t], DIHEDRAL_INVERSE[t]), a)
        assert COMPOSE[t][DIHEDRAL_INVERSE[t]] == 0
        for u in range(8):
            # Closure: composing two elements is an element, as the table says.
            np.testing.assert_array_equal(dihedral_np(images[t], u), images[COMPOSE[t][u]])
    # Table is a Latin square (group), identity 0.
    table = np.array(COMPOSE)
    assert all(sorted(row) == list(range(8)) for row in table)
    assert all(sorted(col) == list(range(8)) for col in table.T)
    assert list(table[0]) == list(range(8)) and list(table[:, 0]) == list(range(8))


def test_pool_identity_and_colour_maps():
    d, cm = sample_pool(5, 7, seed=3)
    assert d.shape == (5, 7) and d.dtype == np.int64
    assert cm.shape == (5, 7, 10) and cm.dtype == np.uint8
    assert (d[:, 0] == 0).all() and (cm[:, 0] == np.arange(10)).all()
    assert (cm[..., 0] == 0).all(), "colour maps must keep black (0)"
    assert (np.sort(cm, axis=-1) == np.arange(10)).all(), "each map is a permutation"
    assert d.min() >= 0 and d.max() <= 7 and len(np.unique(d[:, 1:])) > 1
    d2, cm2 = sample_pool(5, 7, seed=3)
    np.testing.assert_array_equal(d, d2)
    np.testing.assert_array_equal(cm, cm2)
    d3, cm3 = sample_pool(5, 7, seed=4)
    assert not (np.array_equal(d, d3) and np.array_equal(cm, cm3))


def _random_bank(rng, n_pairs, canvas, max_side=None):
    max_side = max_side or canvas
    bi = np.zeros((n_pairs, canvas, canvas), np.uint8)
    bo = np.zeros_like(bi)
    shapes = rng.integers(1, max_side + 1, size=(n_pairs, 4)).astype(np.int32)
    grids = []
    for p, (h, w, ho, wo) in enumerate(shapes):
        a = rng.integers(0, 10, (h, w)).astype(np.uint8)
        b = rng.integers(0, 10, (ho, wo)).astype(np.uint8)
        bi[p, :h, :w] = a
        bo[p, :ho, :wo] = b
        grids.append((a, b))
    return torch.from_numpy(bi), torch.from_numpy(bo), torch.from_numpy(shapes), grids


def _random_batch(rng, shapes, batch, canvas, translate=True):
    pair = torch.from_numpy(rng.integers(0, shapes.shape[0], batch))
    dihedral = torch.from_numpy(rng.integers(0, 8, batch))
    _, cm = sample_pool(1, batch + 1, seed=int(rng.integers(1 << 30)))
    colour_map = torch.from_numpy(cm[0, 1:])
    offset = random_offsets(shapes[pair], dihedral, canvas, translate)
    return pair, dihedral, colour_map, offset


@pytest.mark.parametrize("canvas,batch", [(30, 13), (7, 9), (5, 31)])
def test_augment_ref_matches_numpy_pipeline(canvas, batch):
    rng = np.random.default_rng(canvas * 100 + batch)
    torch.manual_seed(batch)
    bi, bo, shapes, grids = _random_bank(rng, 11, canvas)
    pair, dihedral, cmap, offset = _random_batch(rng, shapes, batch, canvas)
    assert offset.abs().sum() > 0, "translation should move something"
    inputs, labels = augment_batch_ref(bi, bo, shapes, pair, dihedral, cmap, offset, canvas)
    assert inputs.dtype == torch.int32 and labels.dtype == torch.int32
    assert inputs.shape == labels.shape == (batch, canvas * canvas)
    for b in range(batch):
        a, y = grids[int(pair[b])]
        x_np, y_np = augment_example_np(
            a, y, int(dihedral[b]), cmap[b].numpy(), tuple(offset[b].tolist()), canvas
        )
        np.testing.assert_array_equal(inputs[b].numpy(), x_np, err_msg=f"inputs[{b}]")
        np.testing.assert_array_equal(labels[b].numpy(), y_np, err_msg=f"labels[{b}]")


def test_every_transform_at_canvas_edges():
    # Full-canvas grids (no room for EOS) and 1-cell grids, every dihedral id, both corners.
    canvas = 6
    rng = np.random.default_rng(0)
    cases = [((6, 6, 6, 6), (0, 0)), ((1, 1, 1, 1), (5, 5)), ((2, 6, 1, 3), (0, 0)),
             ((3, 1, 6, 2), (0, 4))]  # fmt: skip
    for shp, off in cases:
        h, w, ho, wo = shp
        a = rng.integers(0, 10, (h, w)).astype(np.uint8)
        b = rng.integers(0, 10, (ho, wo)).astype(np.uint8)
        bi = torch.zeros(1, canvas, canvas, dtype=torch.uint8)
        bo = bi.clone()
        bi[0, :h, :w] = torch.from_numpy(a)
        bo[0, :ho, :wo] = torch.from_numpy(b)
        for tid in range(8):
            swapped = tid in (1, 3, 6, 7)
            rows = max(w, wo) if swapped else max(h, ho)
            cols = max(h, ho) if swapped else max(w, wo)
            o = (min(off[0], canvas - rows), min(off[1], canvas - cols))
            cm = np.arange(10, dtype=np.uint8)
            x, y = augment_batch_ref(
                bi, bo, torch.tensor([shp]), torch.tensor([0]), torch.tensor([tid]),
                torch.from_numpy(cm)[None], torch.tensor([o]), canvas,
            )  # fmt: skip
            x_np, y_np = augment_example_np(a, b, tid, cm, o, canvas)
            np.testing.assert_array_equal(x[0].numpy(), x_np)
            np.testing.assert_array_equal(y[0].numpy(), y_np)


@pytest.mark.parametrize("canvas,batch", [(30, 17), (7, 5)])
def test_invert_is_exact_inverse(canvas, batch):
    rng = np.random.default_rng(batch)
    torch.manual_seed(0)
    bi, bo, shapes, grids = _random_bank(rng, 9, canvas)
    pair, dihedral, cmap, _ = _random_batch(rng, shapes, batch, canvas, translate=False)
    zero = torch.zeros(batch, 2, dtype=torch.long)
    inputs, labels = augment_batch_ref(bi, bo, shapes, pair, dihedral, cmap, zero, canvas)
    for tokens, bank, cols in ((labels, bo, slice(2, 4)), (inputs, bi, slice(0, 2))):
        grids_back, shp = invert_batch_ref(tokens, dihedral, cmap, canvas)
        assert grids_back.dtype == torch.uint8 and grids_back.shape == (batch, canvas, canvas)
        assert shp.dtype == torch.int32
        assert torch.equal(shp, shapes[pair][:, cols])
        assert torch.equal(grids_back, bank[pair])  # also zero outside the grid


def test_crop_canvas():
    canvas = 5
    tok = torch.zeros(3, canvas, canvas, dtype=torch.int32)
    tok[0, :2, :3] = 4  # 2x3 grid closed by EOS
    tok[0, 2, :3] = 1
    tok[0, :2, 3] = 1
    tok[1] = 11  # full canvas
    tok[2, 0, 0] = 1  # nothing
    shp = crop_canvas(tok.reshape(3, -1), canvas)
    assert shp.tolist() == [[2, 3], [5, 5], [0, 0]]
    # IGNORE labels are not colours either.
    lab = torch.where(tok == PAD, IGNORE, tok)
    assert torch.equal(crop_canvas(lab.reshape(3, -1), canvas), shp)


def test_inverse_colour_map():
    _, cm = sample_pool(1, 6, seed=1)
    cm = torch.from_numpy(cm[0])
    inv = inverse_colour_map(cm)
    assert torch.equal(inv.long().gather(1, cm.long()), torch.arange(10).expand(6, 10))


def test_random_offsets_range_and_no_translate():
    torch.manual_seed(0)
    canvas = 9
    shapes = torch.tensor([[2, 5, 3, 1], [9, 9, 9, 9], [1, 8, 4, 2]] * 200, dtype=torch.int32)
    dihedral = torch.arange(600) % 8
    off = random_offsets(shapes, dihedral, canvas, True)
    swap = torch.tensor([t in (1, 3, 6, 7) for t in dihedral.tolist()])
    rows = torch.where(swap, torch.maximum(shapes[:, 1], shapes[:, 3]),
                       torch.maximum(shapes[:, 0], shapes[:, 2]))  # fmt: skip
    cols = torch.where(swap, torch.maximum(shapes[:, 0], shapes[:, 2]),
                       torch.maximum(shapes[:, 1], shapes[:, 3]))  # fmt: skip
    assert (off >= 0).all()
    assert (off[:, 0] <= canvas - rows).all() and (off[:, 1] <= canvas - cols).all()
    # The whole range is reachable: the 2x5/3x1 pair (rows 3, cols 5 unswapped) hits 0 and 6.
    sel = (shapes[:, 0] == 2) & ~swap
    assert off[sel, 0].min() == 0 and off[sel, 0].max() == canvas - 3
    assert off[sel, 1].max() == canvas - 5
    assert (random_offsets(shapes, dihedral, canvas, False) == 0).all()


def test_index_bits_match_tables():
    # The batched/kernels' index-map bits and inverse ids agree with the documented tables.
    from hrm_fast.kernels.augment import dihedral_bits, inverse_dihedral

    from hrm_fast.grid_transforms import FLIP_C, FLIP_R, SWAP

    t = torch.arange(8)
    swap, flip_r, flip_c = dihedral_bits(t)
    assert swap.long().tolist() == SWAP
    assert flip_r.long().tolist() == FLIP_R and flip_c.long().tolist() == FLIP_C
    assert inverse_dihedral(t).tolist() == DIHEDRAL_INVERSE
