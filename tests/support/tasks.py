"""Small ARC-format task directories written on the fly, for fast tests."""

import json
import pathlib
import random

import numpy as np


def write_tiny_tasks(root, n_tasks: int = 3, seed: int = 0, max_side: int = 5):
    """A directory of small ARC-format tasks (grids <= max_side), for fast end-to-end tests."""
    rng = random.Random(seed)
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)

    def grid():
        h, w = rng.randint(1, max_side), rng.randint(1, max_side)
        return [[rng.randint(0, 9) for _ in range(w)] for _ in range(h)]

    for t in range(n_tasks):
        pairs = []
        for _ in range(3):
            g = grid()
            pairs.append({"input": g, "output": [row[::-1] for row in g]})  # mirror task
        task = {"train": pairs[:2], "test": pairs[2:]}
        (root / f"task{t:02d}.json").write_text(json.dumps(task))
    return root


def write_nonsquare_tasks(root, n, seed, max_side=5):
    """ARC tasks with non-square grids, so transposes and flips are visible."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def grid():
        h = int(rng.integers(1, max_side + 1))
        w = int(rng.integers(1, max_side + 1))
        if h == w:
            w = w - 1 if w > 1 else 2
        return rng.integers(0, 10, (h, w)).tolist()

    for t in range(n):
        pairs = lambda k: [{"input": grid(), "output": grid()} for _ in range(k)]  # noqa: E731
        task = {"train": pairs(2), "test": pairs(1 + t % 2)}
        (root / f"{seed:02x}{t:06x}.json").write_text(json.dumps(task))
    return root
