"""Maze generator, BFS shortest path and official CSV reader."""

from collections import deque

import numpy as np
import pytest

from hrm_fast import maze
from hrm_fast.board_csv import BoardCsvError, write_rows


def _bfs_all_shortest(board, side, start, goal):
    """Independent check: every shortest path's cells (small search, fine at this size)."""
    flat = board.reshape(-1)
    dist = {start: 0}
    queue = deque([start])
    while queue:
        c = queue.popleft()
        r, k = divmod(c, side)
        for rr, kk in ((r - 1, k), (r + 1, k), (r, k - 1), (r, k + 1)):
            n = rr * side + kk
            if 0 <= rr < side and 0 <= kk < side and flat[n] != maze.WALL and n not in dist:
                dist[n] = dist[c] + 1
                queue.append(n)
    return dist.get(goal, -1), dist


@pytest.fixture(scope="module")
def mazes():
    return maze.generate(12, seed=5, min_path=60)


def test_labels_are_the_unique_shortest_path(mazes):
    side = mazes.side
    assert mazes.inputs.shape == (12, 900) and mazes.labels.shape == (12, 900)
    for q, a, rating in zip(mazes.inputs, mazes.labels, mazes.ratings, strict=True):
        assert (q == maze.START).sum() == 1 and (q == maze.GOAL).sum() == 1
        assert set(np.unique(q)) <= {maze.WALL, maze.OPEN, maze.START, maze.GOAL}
        start = int(np.flatnonzero(q == maze.START)[0])
        goal = int(np.flatnonzero(q == maze.GOAL)[0])
        length, dist = _bfs_all_shortest(q, side, start, goal)
        assert length == rating >= 60
        # The label changes only open cells, to 'o', and those with S and G form a path of
        # exactly the shortest length: consecutive cells adjacent, distances 0..length.
        changed = np.flatnonzero(q != a)
        assert (q[changed] == maze.OPEN).all() and (a[changed] == maze.PATH).all()
        cells = set(changed.tolist()) | {start, goal}
        assert len(cells) == length + 1
        assert sorted(dist[c] for c in cells) == list(range(length + 1))
        by_dist = {dist[c]: c for c in cells}
        for d in range(1, length + 1):  # each step moves to a 4-neighbour
            (r0, c0), (r1, c1) = divmod(by_dist[d - 1], side), divmod(by_dist[d], side)
            assert abs(r0 - r1) + abs(c0 - c1) == 1
        path, unique = maze.shortest_path(q, side)
        assert unique and set(path) == cells
        assert np.array_equal(maze.label_of(q, path), a)


def test_unique_shortest_path_is_checked():
    # Two routes of equal length around a block: S and G opposite corners of a 3x3 ring.
    board = np.full((3, 3), maze.OPEN, np.uint8)
    board[1, 1] = maze.WALL
    board[0, 0], board[2, 2] = maze.START, maze.GOAL
    path, unique = maze.shortest_path(board, 3)
    assert len(path) == 5 and not unique
    board[1, 0] = maze.WALL
    path, unique = maze.shortest_path(board, 3)
    assert unique and path == [0, 1, 2, 5, 8]
    board[0, 1] = maze.WALL
    assert maze.shortest_path(board, 3) == (None, False)


def test_generation_is_deterministic_and_filtered():
    a = maze.generate(3, seed=9, min_path=100, max_path=140)
    b = maze.generate(3, seed=9, min_path=100, max_path=140)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.labels, b.labels)
    assert ((a.ratings >= 100) & (a.ratings <= 140)).all()
    assert not np.array_equal(a.inputs, maze.generate(3, seed=10, min_path=100).inputs)
    with pytest.raises(ValueError, match="only 0 of 1 mazes"):
        maze.generate(1, seed=0, side=9, min_path=10_000, max_tries=2)


def test_encoding_is_the_official_one():
    assert maze.VOCAB == 6
    assert maze.encode(maze.from_text("# SGo")).tolist() == [1, 2, 3, 4, 5]
    assert maze.to_text(maze.decode(np.array([1, 2, 3, 4, 5]))) == "# SGo"


def test_csv_round_trip_and_bad_rows(tmp_path, mazes):
    path = tmp_path / "maze.csv"
    write_rows(path, maze.to_csv_rows(mazes))
    back = maze.read_csv(path)
    assert np.array_equal(back.inputs, mazes.inputs) and np.array_equal(back.labels, mazes.labels)
    q, a = maze.to_text(mazes.inputs[0]), maze.to_text(mazes.labels[0])
    cases = {
        "x," + q[:-1] + "," + a + ",1": "field q has 899 characters",
        "x," + q.replace("S", " ") + "," + a + ",1": "field q holds 0 'S'",
        "x," + q + "," + a.replace("o", "S", 1) + ",1": "field a holds 2 'S'",
        "x," + q.replace(" ", "o", 1) + "," + a + ",1": "field q has 'o'",
        "x," + q + "," + a.replace("#", "o", 1) + ",1": "line 2: field a differs from q",
    }
    for row, message in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text("source,q,a,rating\n" + row + "\n")
        with pytest.raises(BoardCsvError) as err:
            maze.read_csv(bad)
        assert message in str(err.value) and "\n" not in str(err.value), message
