"""Mazes in the official character set (``#`` wall, space open, ``S`` start, ``G`` goal, ``o``
on the shortest path in the label): generator, BFS shortest path, official CSV.

Boards are uint8 arrays of character indices into ``CHARSET`` (token = index + 1).

Generator (``generate``): the passage cells sit on the even rows and columns of the board
(a 15x15 lattice on 30x30; the last row and column stay wall); a randomized depth-first
search carves a perfect maze between them, then ``loops`` times the lattice's cell count extra
walls between lattice cells are knocked out to add cycles. S is a random open cell and G a
random open cell whose shortest-path length from S (moves, 4-neighbour) lies in
``[min_path, max_path]``. With cycles several shortest paths can exist, which would make the
label ambiguous: such a draw is rejected, so every generated label is THE unique shortest path.
Deterministic per seed.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrm_fast.board_csv import BoardCsvError, read_rows

CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = range(5)
VOCAB = 6  # PAD 0, then CHARSET index + 1


@dataclass
class MazeSet:
    """Mazes and labels: uint8 ``[N, side*side]`` CHARSET indices."""

    side: int
    inputs: np.ndarray
    labels: np.ndarray
    ratings: np.ndarray  # [N] int64: the shortest path's length in moves (generated sets)
    sources: list[str]

    def __len__(self) -> int:
        return len(self.inputs)


def _neighbours(cell: int, side: int):
    r, c = divmod(cell, side)
    if r > 0:
        yield cell - side
    if r < side - 1:
        yield cell + side
    if c > 0:
        yield cell - 1
    if c < side - 1:
        yield cell + 1


def bfs(board: np.ndarray, side: int, start: int) -> tuple[list[int], list[int]]:
    """Per cell: moves from ``start`` (-1 unreachable) and the number of shortest paths,
    capped at 2. Walls block; every other character is open."""
    flat = np.asarray(board).reshape(-1).tolist()
    dist = [-1] * (side * side)
    ways = [0] * (side * side)
    dist[start], ways[start] = 0, 1
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        for nb in _neighbours(cell, side):
            if flat[nb] == WALL:
                continue
            if dist[nb] < 0:
                dist[nb] = dist[cell] + 1
                ways[nb] = ways[cell]
                queue.append(nb)
            elif dist[nb] == dist[cell] + 1:
                ways[nb] = min(2, ways[nb] + ways[cell])
    return dist, ways


def shortest_path(board: np.ndarray, side: int) -> tuple[list[int] | None, bool]:
    """The cells of a shortest S -> G path (S and G included) and whether it is the only one;
    ``(None, False)`` when G is unreachable."""
    flat = np.asarray(board).reshape(-1)
    start = int(np.flatnonzero(flat == START)[0])
    goal = int(np.flatnonzero(flat == GOAL)[0])
    dist, ways = bfs(flat, side, start)
    if dist[goal] < 0:
        return None, False
    path = [goal]
    cell = goal
    while cell != start:
        cell = next(nb for nb in _neighbours(cell, side) if dist[nb] == dist[cell] - 1
                    and flat[nb] != WALL)  # fmt: skip
        path.append(cell)
    return path[::-1], ways[goal] == 1


def label_of(board: np.ndarray, path: list[int]) -> np.ndarray:
    """The input with the path's cells between S and G marked ``o``."""
    label = np.array(board, dtype=np.uint8).reshape(-1)
    label[path[1:-1]] = PATH
    return label


def _carve(side: int, rng: random.Random, loops: float) -> list[int]:
    board = [WALL] * (side * side)
    lattice = (side + 1) // 2  # lattice cells on even rows / columns
    cells = [2 * r * side + 2 * c for r in range(lattice) for c in range(lattice)]
    for cell in cells:
        board[cell] = OPEN

    def steps(cell):
        r, c = divmod(cell, side)
        for dr, dc in ((-2, 0), (2, 0), (0, -2), (0, 2)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < side and 0 <= cc < side:
                yield rr * side + cc, (r + dr // 2) * side + c + dc // 2

    start = rng.choice(cells)
    seen = {start}
    stack = [start]
    while stack:
        cell = stack[-1]
        options = [(nxt, wall) for nxt, wall in steps(cell) if nxt not in seen]
        if not options:
            stack.pop()
            continue
        nxt, wall = rng.choice(options)
        board[wall] = OPEN
        seen.add(nxt)
        stack.append(nxt)
    for _ in range(int(loops * len(cells))):
        nxt, wall = rng.choice(list(steps(rng.choice(cells))))
        board[wall] = OPEN
    return board


def generate(
    count: int,
    seed: int,
    side: int = 30,
    min_path: int = 0,
    max_path: int | None = None,
    loops: float = 0.05,
    max_tries: int | None = None,
) -> MazeSet:
    """``count`` mazes with a unique shortest S -> G path whose length (moves) lies in
    ``[min_path, max_path]``; ``ratings`` holds that length. ValueError when ``max_tries``
    draws (default 20 per wanted maze) yield too few."""
    if side < 3:
        raise ValueError(f"side must be at least 3, got {side}")
    rng = random.Random(f"maze:{side}:{seed}")
    max_tries = 20 * count if max_tries is None else max_tries
    inputs, labels, ratings = [], [], []
    tries = 0
    while len(inputs) < count:
        if tries >= max_tries:
            raise ValueError(
                f"only {len(inputs)} of {count} mazes have a unique shortest path of length "
                f"[{min_path}, {max_path}] after {tries} tries"
            )
        tries += 1
        board = _carve(side, rng, loops)
        open_cells = [i for i, v in enumerate(board) if v == OPEN]
        start = rng.choice(open_cells)
        dist, ways = bfs(np.asarray(board), side, start)
        goals = [
            i
            for i in open_cells
            if dist[i] > 0
            and dist[i] >= min_path
            and (max_path is None or dist[i] <= max_path)
            and ways[i] == 1
        ]
        if not goals:
            continue
        goal = rng.choice(goals)
        board[start], board[goal] = START, GOAL
        maze = np.asarray(board, np.uint8)
        path, unique = shortest_path(maze, side)
        assert path is not None and unique and len(path) - 1 == dist[goal]
        inputs.append(maze)
        labels.append(label_of(maze, path))
        ratings.append(dist[goal])
    return MazeSet(
        side=side,
        inputs=np.asarray(inputs, np.uint8).reshape(count, side * side),
        labels=np.asarray(labels, np.uint8).reshape(count, side * side),
        ratings=np.asarray(ratings, np.int64),
        sources=[f"hrm-fast-gen-{seed}"] * count,
    )


def encode(chars: np.ndarray) -> np.ndarray:
    """CHARSET indices -> tokens as the official builder: index + 1 (PAD 0)."""
    return np.asarray(chars, np.uint8) + 1


def decode(tokens: np.ndarray) -> np.ndarray:
    """Tokens -> CHARSET indices; PAD (0) reads as wall."""
    t = np.asarray(tokens).astype(np.int64)
    return np.clip(t - 1, 0, len(CHARSET) - 1).astype(np.uint8)


def to_text(board: np.ndarray) -> str:
    return "".join(CHARSET[int(v)] for v in np.asarray(board).reshape(-1))


def from_text(text: str) -> np.ndarray:
    return np.asarray([CHARSET.index(ch) for ch in text], np.uint8)


def _check_field(name: str, text: str) -> str | None:
    allowed = CHARSET if name == "a" else CHARSET[:4]
    for pos, ch in enumerate(text):
        if ch not in allowed:
            return f"has {ch!r} at position {pos}; expected one of {allowed!r}"
    for ch in "SG":
        if text.count(ch) != 1:
            return f"holds {text.count(ch)} {ch!r}, expected exactly one"
    return None


def read_csv(path: str | Path, side: int = 30, min_rating: int = 0) -> MazeSet:
    """The official ``source,q,a,rating`` CSV (``side``² characters over ``# SGo``). Rows with
    a rating below ``min_rating`` are skipped. A bad row raises ``BoardCsvError`` naming the
    file, line and field; so does an answer that differs from its maze other than by ``o``."""
    rows = read_rows(path, side * side, _check_field)
    keep = [r for r in rows if r.rating >= min_rating]
    if not keep:
        raise BoardCsvError(f"{path}: no row has a rating >= {min_rating}")
    inputs = np.stack([from_text(r.q) for r in keep])
    labels = np.stack([from_text(r.a) for r in keep])
    for k, row in enumerate(keep):
        changed = inputs[k] != labels[k]
        if (inputs[k][changed] != OPEN).any() or (labels[k][changed] != PATH).any():
            raise BoardCsvError(
                f"{path}: line {row.line}: field a differs from q other than by 'o' on open cells"
            )
    return MazeSet(
        side=side,
        inputs=inputs,
        labels=labels,
        ratings=np.asarray([r.rating for r in keep], np.int64),
        sources=[r.source for r in keep],
    )


def to_csv_rows(mazes: MazeSet) -> list[tuple[str, str, str, int]]:
    """``(source, q, a, rating)`` rows in the official format."""
    return [
        (src, to_text(q), to_text(a), int(r))
        for src, q, a, r in zip(
            mazes.sources, mazes.inputs, mazes.labels, mazes.ratings, strict=True
        )
    ]
