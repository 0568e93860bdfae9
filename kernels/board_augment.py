"""Board augmentation kernel (Sudoku, maze): one gather-and-recolour launch per batch.

Every augmentation of a fixed-size board is a permutation of its S cells and a map of its
tokens (Sudoku: row / column shuffles and transpose, digit permutation; maze: the dihedral
group, tokens unchanged), so a batch is described by an index map ``[B, S]`` and a value map
``[B, V]``:

    inputs[b, s] = value_map[b, bank_inputs[board[b], index_map[b, s]]]
    labels[b, s] = value_map[b, bank_labels[board[b], index_map[b, s]]], PAD (0) -> -100

``board_augment_ref`` is the torch reference; the Triton kernel is bit-identical to it (integer
outputs, so there is no autograd).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import MEMORY_BOUND_WARPS
from .aot import AotSpec, LaunchShape
from .dispatch import use_triton

IGNORE_LABEL = -100
MAX_BLOCK = 256  # cells per program: 4 programs per 30x30 maze, 1 per 9x9 Sudoku


def board_augment_ref(bank_inputs, bank_labels, board, index_map, value_map):
    """Eager reference: ``(inputs, labels)`` int32 ``[B, S]`` (module docstring)."""
    src = index_map.long()
    rows = board.long()
    x = torch.gather(bank_inputs[rows].long(), 1, src)
    y = torch.gather(bank_labels[rows].long(), 1, src)
    vmap = value_map.long()
    inputs = torch.gather(vmap, 1, x).to(torch.int32)
    labels = torch.gather(vmap, 1, y).to(torch.int32)
    labels = torch.where(labels == 0, torch.full_like(labels, IGNORE_LABEL), labels)
    return inputs, labels


@triton.jit
def _board_augment_kernel(
    bank_in_ptr,  # [N, S] uint8 tokens
    bank_label_ptr,  # [N, S] uint8 tokens
    board_ptr,  # [B] board index into the bank
    index_ptr,  # [B, S] source cell of each output cell
    value_ptr,  # [B, V] token -> token
    inputs_ptr,  # [B, S] int32
    labels_ptr,  # [B, S] int32
    S: tl.constexpr,
    V: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    s = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = s < S
    row = tl.load(board_ptr + b).to(tl.int64) * S
    out = b.to(tl.int64) * S
    src = tl.load(index_ptr + out + s, mask=ok, other=0).to(tl.int64)
    x = tl.load(bank_in_ptr + row + src, mask=ok, other=0).to(tl.int32)
    y = tl.load(bank_label_ptr + row + src, mask=ok, other=0).to(tl.int32)
    vx = tl.load(value_ptr + b * V + x, mask=ok, other=0).to(tl.int32)
    vy = tl.load(value_ptr + b * V + y, mask=ok, other=0).to(tl.int32)
    vy = tl.where(vy == 0, -100, vy)
    tl.store(inputs_ptr + out + s, vx, mask=ok)
    tl.store(labels_ptr + out + s, vy, mask=ok)


def _block(cells: int) -> int:
    return min(MAX_BLOCK, triton.next_power_of_2(cells))


def _launch(kernel, bank_inputs, bank_labels, board, index_map, value_map, out):
    batch, cells = index_map.shape
    vocab = value_map.shape[1]
    if out is None:
        dev = bank_inputs.device
        out = (
            torch.empty(batch, cells, dtype=torch.int32, device=dev),
            torch.empty(batch, cells, dtype=torch.int32, device=dev),
        )
    inputs, labels = out
    block = _block(cells)
    kernel[(batch, triton.cdiv(cells, block))](
        bank_inputs.contiguous(),
        bank_labels.contiguous(),
        board.contiguous(),
        index_map.contiguous(),
        value_map.contiguous(),
        inputs,
        labels,
        S=cells,
        V=vocab,
        BLOCK=block,
        num_warps=MEMORY_BOUND_WARPS,
    )
    return inputs, labels


def _board_augment_fwd(bank_inputs, bank_labels, board, index_map, value_map, out=None):
    """Launch ``_board_augment_kernel``; ``out`` = optional ``(inputs, labels)`` int32 buffers."""
    return _launch(
        _board_augment_kernel, bank_inputs, bank_labels, board, index_map, value_map, out
    )


@torch.library.triton_op("hrm_fast::board_augment", mutates_args=())
def _board_augment_op(
    bank_inputs: torch.Tensor,
    bank_labels: torch.Tensor,
    board: torch.Tensor,
    index_map: torch.Tensor,
    value_map: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(
        torch.library.wrap_triton(_board_augment_kernel),
        bank_inputs,
        bank_labels,
        board,
        index_map,
        value_map,
        None,
    )


def board_augment(bank_inputs, bank_labels, board, index_map, value_map):
    """Same contract as ``board_augment_ref``; Triton on CUDA."""
    if use_triton(bank_inputs):
        return torch.ops.hrm_fast.board_augment(
            bank_inputs, bank_labels, board, index_map, value_map
        )
    return board_augment_ref(bank_inputs, bank_labels, board, index_map, value_map)


def aot_specs(shape: LaunchShape, target: str = "nvidia") -> list[AotSpec]:
    """Launch configs of the board sampler at the shape's batch: 9x9 Sudoku (S 81, vocab 11)
    and 30x30 maze (S 900, vocab 6); int64 board and index maps as the sampler builds them."""
    del target
    batch = shape.batch
    sig = {
        "bank_in_ptr": "*u8",
        "bank_label_ptr": "*u8",
        "board_ptr": "*i64",
        "index_ptr": "*i64",
        "value_ptr": "*i64",
        "inputs_ptr": "*i32",
        "labels_ptr": "*i32",
        "S": "constexpr",
        "V": "constexpr",
        "BLOCK": "constexpr",
    }
    specs = []
    for name, cells, vocab in (("board_augment_sudoku", 81, 11), ("board_augment_maze", 900, 6)):
        block = _block(cells)
        specs.append(
            AotSpec(
                name=name,
                fn=_board_augment_kernel,
                signature=sig,
                constexprs={"S": cells, "V": vocab, "BLOCK": block},
                num_warps=MEMORY_BOUND_WARPS,
                num_stages=1,
                grid=(batch, triton.cdiv(cells, block)),
                note=f"B={batch} S={cells} V={vocab}",
            )
        )
    return specs
