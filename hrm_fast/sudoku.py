"""Sudoku boards of side n = b*b (b = 2: 4x4, b = 3: 9x9): solver, generator, official CSV.

Boards are flat row-major lists / arrays of n*n ints, 0 = blank, 1..n = digits.

Solver: depth-first search over bitmasks. At every node it first fills every blank that has a
single candidate (repeating until none is left; these are forced, not guesses), then branches on
the blank with the fewest candidates (ties: the first in its scan order), trying its digits in
increasing order. ``SolveResult.guesses`` is the number of digits tried at branching cells over
the whole search needed to count solutions up to 2, i.e. the whole search tree of a puzzle with
one solution. That count is the difficulty ``rating`` of generated puzzles: 0 means solvable by
forced cells alone, and it grows with the backtracking a puzzle needs, the kind of search-based
rating the Sudoku-Extreme set carries (its own numbers come from another solver, so the two
scales differ).

Generator (``generate``): a random full grid (the same search with shuffled digit order), then
the cells in a random order are blanked one at a time, each kept blank only while the puzzle
keeps exactly one solution, until ``max_blanks`` is reached or no cell can go; a puzzle outside
the rating / blank filter is dropped and another is made. Deterministic per seed.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrm_fast.board_csv import read_rows

VOCAB = 11  # 9x9 tokens: PAD 0, blank 1, digit d -> d + 1


def vocab_size(box: int) -> int:
    """PAD, blank and the n = box**2 digits."""
    return box * box + 2


@dataclass
class SolveResult:
    solutions: int  # number found, at most the limit
    solution: list[int] | None  # the first one found
    nodes: int  # search nodes visited
    guesses: int  # digits tried at cells with two or more candidates (the rating)


class _Geometry:
    def __init__(self, box: int):
        self.box = box
        self.n = n = box * box
        self.cells = n * n
        self.row = [i // n for i in range(self.cells)]
        self.col = [i % n for i in range(self.cells)]
        self.blk = [(i // n) // box * box + (i % n) // box for i in range(self.cells)]
        self.slots = [
            (self.row[i], n + self.col[i], 2 * n + self.blk[i]) for i in range(self.cells)
        ]
        self.full = (1 << n) - 1
        self.popcount = [bin(m).count("1") for m in range(1 << n)]


_GEOMETRY: dict[int, _Geometry] = {}


def _geometry(box: int) -> _Geometry:
    if box not in _GEOMETRY:
        if box < 2 or box > 4:
            raise ValueError(f"box must be 2, 3 or 4 (a {box * box}x{box * box} board)")
        _GEOMETRY[box] = _Geometry(box)
    return _GEOMETRY[box]


def solve(
    board,
    box: int = 3,
    limit: int = 2,
    rng: random.Random | None = None,
    exclude: tuple[int, int] | None = None,
) -> SolveResult:
    """Count solutions of ``board`` up to ``limit``. ``rng`` shuffles the digit order (used to
    make random full grids); leave it None for the documented, deterministic search.
    ``exclude=(cell, digit)`` forbids that digit in that blank cell."""
    g = _geometry(box)
    grid = [int(v) for v in board]
    if len(grid) != g.cells:
        raise ValueError(f"board has {len(grid)} cells, expected {g.cells}")
    full, popcount, slots = g.full, g.popcount, g.slots
    used = [0] * (3 * g.n)  # digits placed per row, column and box
    empties = []
    for i, v in enumerate(grid):
        if v == 0:
            empties.append(i)
            continue
        if not 1 <= v <= g.n:
            raise ValueError(f"cell {i} holds {v}, expected 0..{g.n}")
        bit = 1 << (v - 1)
        a, b, c = slots[i]
        if (used[a] | used[b] | used[c]) & bit:
            return SolveResult(0, None, 0, 0)  # a clash among the givens
        used[a] |= bit
        used[b] |= bit
        used[c] |= bit
    ex_cell, ex_mask = -1, full
    if exclude is not None:
        ex_cell, ex_mask = exclude[0], full & ~(1 << (exclude[1] - 1))
    stats = [0, 0, 0]  # nodes, guesses, solutions
    found: list[list[int]] = []

    def search(k: int) -> bool:
        stats[0] += 1
        placed = []  # forced cells filled at this node, undone on return
        best_j, best_mask, best_count = -1, 0, 99
        progress = True
        while progress and k:
            progress = False
            best_j, best_mask, best_count = -1, 0, 99
            j = 0
            while j < k:
                i = empties[j]
                a, b, c = slots[i]
                m = full & ~(used[a] | used[b] | used[c])
                if i == ex_cell:
                    m &= ex_mask
                cnt = popcount[m]
                if cnt == 1:  # forced: fill it now, not a guess
                    k -= 1
                    empties[j], empties[k] = empties[k], i
                    used[a] |= m
                    used[b] |= m
                    used[c] |= m
                    grid[i] = m.bit_length()
                    placed.append(i)
                    progress = True
                    continue
                if cnt < best_count:
                    if cnt == 0:
                        best_count = 0
                        break
                    best_j, best_mask, best_count = j, m, cnt
                j += 1
            if best_count == 0:
                break
        done = False
        if best_count == 0:
            pass
        elif k == 0:
            stats[2] += 1
            if not found:
                found.append(list(grid))
            done = stats[2] >= limit
        else:
            last = k - 1
            empties[best_j], empties[last] = empties[last], empties[best_j]
            i = empties[last]
            a, b, c = slots[i]
            bits = []
            m = best_mask
            while m:
                bit = m & -m
                bits.append(bit)
                m ^= bit
            if rng is not None:
                rng.shuffle(bits)
            for bit in bits:
                stats[1] += 1
                used[a] |= bit
                used[b] |= bit
                used[c] |= bit
                grid[i] = bit.bit_length()
                done = search(last)
                used[a] ^= bit
                used[b] ^= bit
                used[c] ^= bit
                grid[i] = 0
                if done:
                    break
        for i in placed:
            bit = 1 << (grid[i] - 1)
            a, b, c = slots[i]
            used[a] ^= bit
            used[b] ^= bit
            used[c] ^= bit
            grid[i] = 0
        return done

    search(len(empties))
    return SolveResult(stats[2], found[0] if found else None, stats[0], stats[1])


def is_solution(puzzle, solution, box: int = 3) -> bool:
    """``solution`` fills every cell, keeps the givens of ``puzzle``, and every row, column and
    box holds each digit once."""
    g = _geometry(box)
    s = np.asarray(solution, dtype=np.int64).reshape(g.n, g.n)
    p = np.asarray(puzzle, dtype=np.int64).reshape(g.n, g.n)
    if ((p != 0) & (p != s)).any():
        return False
    want = np.arange(1, g.n + 1)
    boxes = s.reshape(box, box, box, box).transpose(0, 2, 1, 3).reshape(g.n, g.n)
    return all((np.sort(part, axis=1) == want).all() for part in (s, s.T, boxes))


def rating(puzzle, box: int = 3) -> int:
    """The difficulty of a puzzle: ``solve(puzzle).guesses`` (module docstring)."""
    return solve(puzzle, box).guesses


def random_solution(box: int, rng: random.Random) -> list[int]:
    """A random complete grid."""
    result = solve([0] * (box**4), box, limit=1, rng=rng)
    assert result.solution is not None
    return result.solution


def _dig(solution: list[int], box: int, rng: random.Random, max_blanks: int) -> list[int]:
    g = _geometry(box)
    puzzle = list(solution)
    order = list(range(len(puzzle)))
    rng.shuffle(order)
    units = _units(box)
    # Digits given in each row / column / box of the puzzle being dug.
    used = [[g.full] * g.n for _ in range(3)]
    unit_of = (g.row, g.col, g.blk)
    blanks = 0
    for i in order:
        if blanks >= max_blanks:
            break
        v = puzzle[i]
        bit = 1 << (v - 1)
        puzzle[i] = 0
        for kind in range(3):
            used[kind][unit_of[kind][i]] ^= bit
        # Still unique iff no solution puts another digit in cell i. Cheap sufficient tests
        # first: the givens rule out every other digit there (naked single), or rule out v
        # from every other blank of one of its units (hidden single); else a search.
        r, c, b = g.row[i], g.col[i], g.blk[i]
        keep = (used[0][r] | used[1][c] | used[2][b] | bit) == g.full
        for kind in range(3):
            if keep:
                break
            keep = all(
                puzzle[j] or (used[0][g.row[j]] | used[1][g.col[j]] | used[2][g.blk[j]]) & bit
                for j in units[kind][unit_of[kind][i]]
                if j != i
            )
        if keep or solve(puzzle, box, limit=1, exclude=(i, v)).solutions == 0:
            blanks += 1
        else:
            puzzle[i] = v
            for kind in range(3):
                used[kind][unit_of[kind][i]] |= bit
    return puzzle


_UNITS: dict[int, tuple[list[list[int]], ...]] = {}


def _units(box: int) -> tuple[list[list[int]], ...]:
    """The cells of every row, column and box."""
    if box not in _UNITS:
        g = _geometry(box)
        _UNITS[box] = tuple(
            [[i for i in range(g.cells) if of[i] == u] for u in range(g.n)]
            for of in (g.row, g.col, g.blk)
        )
    return _UNITS[box]


@dataclass
class SudokuSet:
    """Puzzles with their unique solutions: uint8 ``[N, n*n]`` digits (0 = blank)."""

    box: int
    puzzles: np.ndarray
    solutions: np.ndarray
    ratings: np.ndarray  # [N] int64
    sources: list[str]

    def __len__(self) -> int:
        return len(self.puzzles)

    @property
    def blanks(self) -> np.ndarray:
        return (self.puzzles == 0).sum(axis=1)


def _make_one(k: int, seed: int, box: int, bounds: tuple, tries: int):
    """Puzzle ``k`` of a seed: its own random stream, so the set does not depend on how many
    processes make it. ``(puzzle, solution, rating)``, or None after ``tries`` misses."""
    min_rating, max_rating, min_blanks, max_blanks = bounds
    rng = random.Random(f"sudoku:{box}:{seed}:{k}")
    for _ in range(tries):
        solution = random_solution(box, rng)
        puzzle = _dig(solution, box, rng, max_blanks)
        if puzzle.count(0) < min_blanks:
            continue
        r = rating(puzzle, box)
        if r < min_rating or (max_rating is not None and r > max_rating):
            continue
        return puzzle, solution, r
    return None


def _make_range(args) -> list:
    start, stop, seed, box, bounds, tries = args
    return [_make_one(k, seed, box, bounds, tries) for k in range(start, stop)]


def generate(
    count: int,
    seed: int,
    box: int = 3,
    min_rating: int = 0,
    max_rating: int | None = None,
    min_blanks: int = 0,
    max_blanks: int | None = None,
    max_tries: int = 50,
    workers: int | None = None,
) -> SudokuSet:
    """``count`` puzzles with exactly one solution, rating and blanks inside the bounds
    (``None`` = no upper bound). Digging stops at ``max_blanks``. Each puzzle gets up to
    ``max_tries`` draws to fit the filter, else ValueError. ``workers`` processes share the
    work (default: up to 8, one per CPU, for 200 puzzles or more); the result is the same for
    any number."""
    g = _geometry(box)
    max_blanks = g.cells if max_blanks is None else max_blanks
    if min_blanks > max_blanks:
        raise ValueError(f"min_blanks {min_blanks} > max_blanks {max_blanks}")
    bounds = (min_rating, max_rating, min_blanks, max_blanks)
    if workers is None:
        workers = 1 if count < 200 else max(1, min(8, os.cpu_count() or 1))
    made: list = []
    if workers <= 1:
        for k in range(count):
            one = _make_one(k, seed, box, bounds, max_tries)
            if one is None:
                break
            made.append(one)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        step = -(-count // (4 * workers))
        jobs = [(a, min(a + step, count), seed, box, bounds, max_tries)
                for a in range(0, count, step)]  # fmt: skip
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            made = [one for part in pool.map(_make_range, jobs) for one in part]
        made = [one for one in made if one is not None]
    if len(made) < count:
        raise ValueError(
            f"only {len(made)} of {count} puzzles fit rating [{min_rating}, {max_rating}] "
            f"and blanks [{min_blanks}, {max_blanks}] ({max_tries} tries each)"
        )
    puzzles, solutions, ratings = zip(*made, strict=True) if made else ((), (), ())
    return SudokuSet(
        box=box,
        puzzles=np.asarray(puzzles, np.uint8).reshape(count, g.cells),
        solutions=np.asarray(solutions, np.uint8).reshape(count, g.cells),
        ratings=np.asarray(ratings, np.int64),
        sources=[f"hrm-fast-gen-{seed}"] * count,
    )


def encode(digits: np.ndarray) -> np.ndarray:
    """Digits (0 = blank) -> tokens as the official builder: blank 1, digit d -> d + 1."""
    return np.asarray(digits, np.uint8) + 1


def decode(tokens: np.ndarray) -> np.ndarray:
    """Tokens -> digits; PAD (0) reads as blank."""
    t = np.asarray(tokens).astype(np.int64)
    return np.clip(t - 1, 0, None).astype(np.uint8)


_DIGITS = "123456789"


def _check_field(name: str, text: str) -> str | None:
    allowed = _DIGITS + (".0" if name == "q" else "")
    for pos, ch in enumerate(text):
        if ch not in allowed:
            return (
                f"has {ch!r} at position {pos}; expected {'1-9, . or 0' if name == 'q' else '1-9'}"
            )
    return None


def read_csv(path: str | Path, min_rating: int = 0) -> SudokuSet:
    """The official ``source,q,a,rating`` CSV (81-character boards, ``.`` or ``0`` blank).
    Rows with a rating below ``min_rating`` are skipped, as the official ``--min-difficulty``.
    A bad row raises ``BoardCsvError`` naming the file, line and field; so does an answer
    that does not solve its puzzle."""
    from hrm_fast.board_csv import BoardCsvError

    rows = read_rows(path, 81, _check_field)
    keep = [r for r in rows if r.rating >= min_rating]
    if not keep:
        raise BoardCsvError(f"{path}: no row has a rating >= {min_rating}")
    n = len(keep)
    puzzles = np.zeros((n, 81), np.uint8)
    solutions = np.zeros((n, 81), np.uint8)
    for k, row in enumerate(keep):
        puzzles[k] = [0 if ch in ".0" else int(ch) for ch in row.q]
        solutions[k] = [int(ch) for ch in row.a]
        if not is_solution(puzzles[k], solutions[k], 3):
            raise BoardCsvError(f"{path}: line {row.line}: field a does not solve field q")
    return SudokuSet(
        box=3,
        puzzles=puzzles,
        solutions=solutions,
        ratings=np.asarray([r.rating for r in keep], np.int64),
        sources=[r.source for r in keep],
    )


def to_csv_rows(puzzles: SudokuSet) -> list[tuple[str, str, str, int]]:
    """``(source, q, a, rating)`` rows in the official format (9x9 only; ``.`` blank)."""
    if puzzles.box != 3:
        raise ValueError("the official CSV format holds 9x9 boards")
    rows = []
    for src, p, s, r in zip(
        puzzles.sources, puzzles.puzzles, puzzles.solutions, puzzles.ratings, strict=True
    ):
        q = "".join("." if v == 0 else str(int(v)) for v in p)
        a = "".join(str(int(v)) for v in s)
        rows.append((src, q, a, int(r)))
    return rows
