"""Fixed-size board puzzles (Sudoku, maze) as a dataset and an on-device sampler.

Tokens follow the official builders: Sudoku PAD 0, blank 1, digit d -> d + 1 (vocab n + 2,
11 for 9x9); maze PAD 0, then ``# SGo`` -> 1..5 (vocab 6). Every cell is labelled. All boards
share one puzzle id (1; 0 is the blank id), so ``num_puzzle_ids`` is 2.

``BoardSampler.sample`` has ``DeviceSampler.sample``'s contract. Each draw is a board and an
augmentation, expressed as an index map over the S cells plus a value map over the vocab
(``hrm_fast.kernels.board_augment``): Sudoku = digit permutation (blank fixed), band / stack
shuffles, row-in-band / column-in-stack shuffles and a transpose with probability 0.5, as the
official ``shuffle_sudoku``; maze = one of the 8 dihedral transforms (identity included), or
none.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hrm_fast import maze, sudoku
from hrm_fast.config import DataConfig
from hrm_fast.errors import UserError
from hrm_fast.kernels.board_augment import board_augment_ref

KINDS = ("sudoku", "maze")
GENERATED = {"sudoku-gen": "sudoku", "maze-gen": "maze"}  # sources made here, named as ours
PUZZLE_ID = 1  # every board's puzzle id; 0 is the blank id


@dataclass
class BoardDataset:
    """Train boards (augmented when sampled) and held-out test boards, as uint8 tokens
    ``[N, side*side]``; ``*_ratings`` are the rows' difficulty (Sudoku search guesses or CSV
    rating; maze shortest-path length or CSV rating)."""

    kind: str
    side: int
    vocab_size: int
    train_inputs: np.ndarray
    train_labels: np.ndarray
    test_inputs: np.ndarray
    test_labels: np.ndarray
    train_ratings: np.ndarray
    test_ratings: np.ndarray
    augment: bool = True  # Sudoku shuffles / maze dihedral transforms while sampling

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @classmethod
    def from_sudoku(
        cls, train: sudoku.SudokuSet, test: sudoku.SudokuSet, augment: bool = True
    ) -> BoardDataset:
        return cls(
            kind="sudoku",
            side=train.box * train.box,
            vocab_size=sudoku.vocab_size(train.box),
            train_inputs=sudoku.encode(train.puzzles),
            train_labels=sudoku.encode(train.solutions),
            test_inputs=sudoku.encode(test.puzzles),
            test_labels=sudoku.encode(test.solutions),
            train_ratings=train.ratings,
            test_ratings=test.ratings,
            augment=augment,
        )

    @classmethod
    def from_maze(
        cls, train: maze.MazeSet, test: maze.MazeSet, augment: bool = False
    ) -> BoardDataset:
        return cls(
            kind="maze",
            side=train.side,
            vocab_size=maze.VOCAB,
            train_inputs=maze.encode(train.inputs),
            train_labels=maze.encode(train.labels),
            test_inputs=maze.encode(test.inputs),
            test_labels=maze.encode(test.labels),
            train_ratings=train.ratings,
            test_ratings=test.ratings,
            augment=augment,
        )

    @property
    def box(self) -> int:
        """Sudoku box side (3 for 9x9)."""
        return int(round(self.side**0.5))

    @property
    def seq_len(self) -> int:
        return self.side * self.side

    @property
    def num_puzzle_ids(self) -> int:
        return 2

    @property
    def num_train_pairs(self) -> int:
        return len(self.train_inputs)

    @property
    def task_ids(self) -> list[str]:
        return [self.kind]

    @functools.cached_property
    def digest(self) -> str:
        """sha256 (16 hex digits) of the kind and every train and test board, so a checkpoint
        names the boards it was trained and scored on."""
        h = hashlib.sha256(f"{self.kind}:{self.side}:{self.vocab_size}".encode())
        for a in (self.train_inputs, self.train_labels, self.test_inputs, self.test_labels):
            h.update(np.ascontiguousarray(a, dtype=np.uint8).tobytes())
            h.update(str(a.shape).encode())
        return h.hexdigest()[:16]

    def test_batch(self, start: int, stop: int, device="cpu") -> dict[str, torch.Tensor]:
        """Held-out boards ``[start, stop)`` un-augmented, in ``sample``'s layout."""
        inputs = torch.as_tensor(self.test_inputs[start:stop], device=device).to(torch.int32)
        labels = torch.as_tensor(self.test_labels[start:stop], device=device).to(torch.int32)
        labels = torch.where(labels == 0, torch.full_like(labels, -100), labels)
        ids = torch.full((len(inputs),), PUZZLE_ID, dtype=torch.int32, device=device)
        return dict(inputs=inputs, labels=labels, puzzle_identifiers=ids)


def exact_match(pred_tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """bool ``[B]``: every labelled cell predicted (labels -100 are ignored). Generated and
    official boards have one solution, so this is the puzzle's exact score."""
    return ((pred_tokens == labels) | (labels == -100)).all(dim=1)


def board_text(kind: str, tokens, side: int) -> str:
    """A board as text lines: Sudoku digits with ``.`` blanks; maze in ``# SGo``."""
    t = np.asarray(tokens).reshape(side, side)
    if kind == "sudoku":
        digits = sudoku.decode(t)
        return "\n".join("".join("." if v == 0 else str(int(v)) for v in row) for row in digits)
    return "\n".join(maze.to_text(maze.decode(row)) for row in t)


def dihedral_index_maps(side: int) -> torch.Tensor:
    """``[8, side*side]`` int64: row t is the source cell of every output cell under dihedral
    transform t (t % 4 quarter turns, then a left-right flip when t >= 4; row 0 = identity)."""
    grid = torch.arange(side * side).reshape(side, side)
    maps = []
    for t in range(8):
        g = torch.rot90(grid, t % 4)
        if t >= 4:
            g = torch.flip(g, dims=(1,))
        maps.append(g.reshape(-1))
    return torch.stack(maps)


def sudoku_maps(batch: int, box: int, device, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random Sudoku symmetries: index map ``[B, n*n]`` and value map ``[B, n+2]`` (int64).
    Output cell (i, j) reads (rows[i], cols[j]) of the board, transposed first with p 0.5;
    rows = a band permutation x a row permutation inside each band (cols likewise)."""
    n = box * box

    def rand(*shape):
        return torch.rand(*shape, device=device, generator=generator)

    def line_perm():
        band = rand(batch, box).argsort(-1)
        inner = rand(batch, box, box).argsort(-1)
        return (band[:, :, None] * box + inner).reshape(batch, n)

    rows, cols = line_perm(), line_perm()
    transpose = (rand(batch) < 0.5)[:, None, None]
    plain = rows[:, :, None] * n + cols[:, None, :]
    flipped = cols[:, None, :] * n + rows[:, :, None]
    index_map = torch.where(transpose, flipped, plain).reshape(batch, n * n)
    digits = rand(batch, n).argsort(-1) + 2  # token d + 1 -> token perm[d - 1] + 2
    keep = torch.arange(2, device=device).expand(batch, 2)  # PAD and blank stay
    value_map = torch.cat([keep, digits], dim=1)
    return index_map, value_map


class BoardSampler:
    """Augmented training batches of a ``BoardDataset``, drawn on the device.

    Static shapes, no host sync: safe inside ``torch.compile(fullgraph=True)`` and CUDA graphs.
    Randomness from the default generator of ``device``. backend: "reference" (torch ops),
    "fused" (Triton kernel on CUDA), "auto" (fused on CUDA).
    """

    def __init__(self, dataset: BoardDataset, device="cpu", backend: str = "auto"):
        if backend not in ("auto", "reference", "fused"):
            raise ValueError(f"backend must be auto/reference/fused, got {backend!r}")
        device = torch.device(device)
        self.device = device
        self.kind = dataset.kind
        self.side = dataset.side
        self.box = dataset.box
        self.augment_on = dataset.augment
        self.num_boards = dataset.num_train_pairs
        self.vocab_size = dataset.vocab_size
        self.bank_inputs = torch.as_tensor(dataset.train_inputs, device=device)
        self.bank_labels = torch.as_tensor(dataset.train_labels, device=device)
        self.dihedral = dihedral_index_maps(self.side).to(device)
        self.identity_values = torch.arange(self.vocab_size, device=device)
        fused = backend == "fused" or (backend == "auto" and device.type == "cuda")
        if fused:
            from hrm_fast.kernels.board_augment import board_augment

            self._augment = board_augment
        else:
            self._augment = board_augment_ref

    def draw(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The random choices of one batch: ``board [B]``, ``index_map [B, S]``,
        ``value_map [B, V]`` (int64 device tensors)."""
        dev = self.device
        board = torch.randint(0, self.num_boards, (batch_size,), device=dev)
        if self.kind == "sudoku" and self.augment_on:
            index_map, value_map = sudoku_maps(batch_size, self.box, dev)
        else:
            if self.augment_on:
                t = torch.randint(0, 8, (batch_size,), device=dev)
            else:
                t = torch.zeros(batch_size, dtype=torch.long, device=dev)
            index_map = self.dihedral[t]
            value_map = self.identity_values.expand(batch_size, self.vocab_size)
        return dict(board=board, index_map=index_map, value_map=value_map)

    def augment(self, d: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._augment(
            self.bank_inputs, self.bank_labels, d["board"], d["index_map"], d["value_map"]
        )

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """``inputs int32 [B, S]``, ``labels int32 [B, S]``, ``puzzle_identifiers int32 [B]``
        (all PUZZLE_ID)."""
        d = self.draw(batch_size)
        inputs, labels = self.augment(d)
        ids = torch.full((batch_size,), PUZZLE_ID, dtype=torch.int32, device=self.device)
        return dict(inputs=inputs, labels=labels, puzzle_identifiers=ids)


# ---------------------------------------------------------------------------------------------
# from the data config
# ---------------------------------------------------------------------------------------------


def board_kind(source: str) -> str | None:
    """ "sudoku" / "maze" for a board source (``sudoku:PATH``, ``maze:PATH``, ``sudoku-gen``,
    ``maze-gen``), None for anything else (ARC)."""
    source = str(source).strip()
    if source in GENERATED:
        return GENERATED[source]
    kind, sep, _ = source.partition(":")
    return kind if sep and kind in KINDS else None


def _csv_path(source: str, kind: str, flag: str) -> Path:
    prefix = kind + ":"
    path = source[len(prefix) :] if source.startswith(prefix) else source
    if not path.strip():
        raise UserError(f"{flag} {source}: expected {kind}:PATH.csv")
    return Path(path)


def _held_out_csv(cfg: DataConfig, kind: str, train_path: Path) -> Path | None:
    if cfg.eval_source == "none":
        return None
    if cfg.eval_source:
        return _csv_path(cfg.eval_source, kind, "--eval-source")
    sibling = train_path.with_name("test.csv")
    if sibling != train_path and sibling.exists():
        return sibling
    raise UserError(f"--eval-source: no test.csv beside {train_path}; give {kind}:PATH.csv or none")


def _unseen(test_inputs: np.ndarray, train_inputs: np.ndarray) -> np.ndarray:
    """Rows of the test set whose board is not also a training board."""
    seen = {row.tobytes() for row in train_inputs}
    return np.asarray([row.tobytes() not in seen for row in test_inputs], bool)


def generated_sets(cfg: DataConfig):
    """``(train, test)`` SudokuSets / MazeSets of a ``sudoku-gen`` / ``maze-gen`` source, from
    ``cfg.gen_seed`` (train and test use separate streams; a test board equal to a training
    board is dropped). UserError when the difficulty filter lets too few through."""
    kind = GENERATED.get(cfg.source)
    if kind is None:
        raise UserError(f"--source {cfg.source}: expected one of {', '.join(GENERATED)}")
    max_d = None if cfg.max_difficulty < 0 else cfg.max_difficulty
    try:
        if kind == "sudoku":
            max_b = None if cfg.max_blanks < 0 else cfg.max_blanks
            opts = dict(box=cfg.sudoku_box, min_rating=cfg.min_difficulty, max_rating=max_d,
                        min_blanks=cfg.min_blanks, max_blanks=max_b)  # fmt: skip
            train = sudoku.generate(cfg.gen_train, 2 * cfg.gen_seed, **opts)
            test = sudoku.generate(cfg.gen_test, 2 * cfg.gen_seed + 1, **opts)
            keep = _unseen(test.puzzles, train.puzzles)
        else:
            opts = dict(min_path=cfg.min_difficulty, max_path=max_d)
            train = maze.generate(cfg.gen_train, 2 * cfg.gen_seed, **opts)
            test = maze.generate(cfg.gen_test, 2 * cfg.gen_seed + 1, **opts)
            keep = _unseen(test.inputs, train.inputs)
    except ValueError as e:  # a filter that too few boards pass
        raise UserError(f"--source {cfg.source}: {e}") from None
    return train, _subset(test, keep)


def write_generated_csvs(cfg: DataConfig, out_dir) -> tuple[Path, Path]:
    """Write a generated source's sets as ``train.csv`` / ``test.csv`` in the official format
    (read back with ``--source sudoku:DIR/train.csv``; 9x9 Sudoku and mazes only)."""
    from hrm_fast.board_csv import write_rows

    train, test = generated_sets(cfg)
    rows = sudoku.to_csv_rows if GENERATED[cfg.source] == "sudoku" else maze.to_csv_rows
    out = Path(out_dir)
    write_rows(out / "train.csv", rows(train))
    write_rows(out / "test.csv", rows(test))
    return out / "train.csv", out / "test.csv"


def build_board_dataset(cfg: DataConfig) -> BoardDataset:
    """The Sudoku / maze data set that ``cfg.source`` names (``board_kind`` is not None).
    Generated sets use ``cfg.gen_*`` and the difficulty fields; CSV sets keep rows with a
    rating >= ``min_difficulty`` and, with ``max_tasks`` > 0, the first ``max_tasks`` rows."""
    kind = board_kind(cfg.source)
    if kind is None:
        raise UserError(f"--source {cfg.source}: not a Sudoku or maze source")
    if cfg.source in GENERATED:
        train, test = generated_sets(cfg)
    else:
        path = _csv_path(cfg.source, kind, "--source")
        if not path.is_file():  # before the held-out file: name the one the user must fetch
            raise UserError(
                f"--source {cfg.source}: no such file (the official CSV files are downloaded "
                "by hand: docs/boards.md)"
            )
        held_out = _held_out_csv(cfg, kind, path)
        read = sudoku.read_csv if kind == "sudoku" else maze.read_csv
        train = read(path, min_rating=cfg.min_difficulty)
        test = read(held_out, min_rating=cfg.min_difficulty) if held_out else None
        if cfg.max_tasks > 0:
            train = _first(train, cfg.max_tasks)
        if test is None:
            test = _first(train, 0)
    if kind == "sudoku":
        data = BoardDataset.from_sudoku(train, test, augment=cfg.board_augment)
    else:
        data = BoardDataset.from_maze(train, test, augment=cfg.board_augment)
    if cfg.canvas != data.side:
        raise UserError(
            f"--canvas {cfg.canvas}: {kind} boards are {data.side}x{data.side}; "
            f"set --canvas {data.side}"
        )
    return data


def _subset(rows, keep):
    """A SudokuSet / MazeSet with the rows where ``keep`` (bool or index array) holds."""
    out = {}
    for name, value in vars(rows).items():
        if isinstance(value, np.ndarray):
            out[name] = value[keep]
        elif isinstance(value, list):
            out[name] = [value[i] for i in np.arange(len(value))[keep]]
        else:
            out[name] = value
    return type(rows)(**out)


def _first(rows, n: int):
    return _subset(rows, np.arange(min(n, len(rows))))
