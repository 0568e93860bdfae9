"""Board gather-and-recolour kernel vs its torch reference: bit-identical."""

import pytest
import torch
from hrm_fast.kernels.board_augment import (
    _board_augment_fwd,
    aot_specs,
    board_augment,
    board_augment_ref,
)

from hrm_fast.compile_report import preset_shape
from tests.support.parity import kernel_device

pytestmark = pytest.mark.interpret


def _case(cells, vocab, batch, n_boards, index_dtype, dev):
    g = torch.Generator().manual_seed(cells * 100 + batch)
    bank_in = torch.randint(0, vocab, (n_boards, cells), generator=g, dtype=torch.uint8)
    bank_lab = torch.randint(0, vocab, (n_boards, cells), generator=g, dtype=torch.uint8)
    board = torch.randint(0, n_boards, (batch,), generator=g)
    index_map = torch.stack([torch.randperm(cells, generator=g) for _ in range(batch)])
    value_map = torch.stack([torch.randperm(vocab, generator=g) for _ in range(batch)])
    args = (bank_in, bank_lab, board, index_map.to(index_dtype), value_map.to(index_dtype))
    return tuple(a.to(dev) for a in args)


@pytest.mark.parametrize(
    "cells,vocab,batch", [(16, 6, 3), (81, 11, 7), (81, 11, 1), (900, 6, 5), (900, 11, 2)]
)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_board_augment_kernel_matches_ref(cells, vocab, batch, index_dtype):
    dev = kernel_device()
    args = _case(cells, vocab, batch, 4, index_dtype, dev)
    want = board_augment_ref(*args)
    out = tuple(torch.full((batch, cells), -7, dtype=torch.int32, device=dev) for _ in range(2))
    got = _board_augment_fwd(*args, out=out)
    assert got[0] is out[0] and got[1] is out[1]
    for name, g, w in zip(("inputs", "labels"), got, want, strict=True):
        assert g.dtype == w.dtype == torch.int32 and g.shape == w.shape
        bad = (g != w).nonzero()
        assert len(bad) == 0, f"{name}: {len(bad)} cells differ, first at {bad[:5].tolist()}"
    # The reference itself: a gather then a recolour, PAD labels ignored.
    bank_in, bank_lab, board, index_map, value_map = (a.cpu().long() for a in args)
    b, s = batch - 1, cells // 2
    src = index_map[b, s]
    assert want[0][b, s] == value_map[b, bank_in[board[b], src]]
    lab = value_map[b, bank_lab[board[b], src]]
    assert want[1][b, s] == (-100 if lab == 0 else lab)
    assert (want[1] == -100).sum() == (torch.gather(value_map, 1, torch.gather(
        bank_lab[board], 1, index_map)) == 0).sum()  # fmt: skip


def test_public_function_dispatches_to_reference_on_cpu():
    args = _case(81, 11, 5, 3, torch.int64, "cpu")
    for g, w in zip(board_augment(*args), board_augment_ref(*args), strict=True):
        assert torch.equal(g, w)
    assert hasattr(torch.ops.hrm_fast, "board_augment")


def test_registered_op_matches_ref():
    from hrm_fast.kernels.dispatch import triton_on_cpu

    dev = kernel_device()
    args = _case(900, 6, 3, 2, torch.int64, dev)
    with triton_on_cpu() if dev == "cpu" else torch.no_grad():
        got = board_augment(*args)
    for g, w in zip(got, board_augment_ref(*args), strict=True):
        assert torch.equal(g, w)


@pytest.mark.parametrize("preset", ["seed", "paper", "trm-arc1"])
def test_aot_specs(preset):
    specs = aot_specs(preset_shape(preset))
    assert {s.name for s in specs} == {"board_augment_sudoku", "board_augment_maze"}
    for s in specs:
        assert set(s.signature) == set(s.fn.arg_names)
        assert all(s.signature[k] == "constexpr" for k in s.constexprs)


@pytest.mark.static
def test_aot_compile_no_spills():
    # The interpreter replaces @triton.jit functions, so compile in fresh processes.
    from hrm_fast.kernels.aot import TARGET_FAMILIES

    from hrm_fast import compile_report as report

    entries = report.collect_specs(("paper",), families=("board_augment",), targets=TARGET_FAMILIES)
    rows = report.compile_all(entries, (80, 90, "gfx942", "gfx1100"))
    assert {(r["kernel"], r["arch"]) for r in rows} == {
        (k, a)
        for k in ("board_augment_sudoku", "board_augment_maze")
        for a in (80, 90, "gfx942", "gfx1100")
    }
    for r in rows:
        assert not report.row_failures(r), report.row_failures(r)
        assert (
            r["spill_bytes"] == 0 and r.get("local_bytes", 0) == 0 and r.get("stack_bytes", 0) == 0
        )
