"""The ARC Prize submission file, ``submission.json``.

Format (ARC Prize / Kaggle): an object mapping every task id of the challenges file to a list
with one entry per test input, in order; each entry is ``{"attempt_1": grid, "attempt_2":
grid}``, both present, a grid being a non-empty list of equal-length rows of integers 0-9, at
most 30x30. A task scores when one attempt equals the hidden output exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hrm_fast.files import WriteFailed, write_output

MAX_SIDE = 30
ATTEMPTS = ("attempt_1", "attempt_2")


class SubmissionError(ValueError):
    """A submission that breaks the format; ``str(err)`` is one line naming the entry."""


def grid_problem(grid) -> str | None:
    """Why ``grid`` is not a valid answer grid, or None when it is."""
    if not isinstance(grid, list) or not grid:
        return "not a non-empty list of rows"
    if len(grid) > MAX_SIDE:
        return f"{len(grid)} rows, more than {MAX_SIDE}"
    width = None
    for r, row in enumerate(grid):
        if not isinstance(row, list) or not row:
            return f"row {r} is not a non-empty list"
        if width is None:
            width = len(row)
        if len(row) != width:
            return f"row {r} has {len(row)} cells, row 0 has {width}"
        if width > MAX_SIDE:
            return f"{width} columns, more than {MAX_SIDE}"
        for c, v in enumerate(row):
            if type(v) is not int or not 0 <= v <= 9:
                return f"[{r}][{c}] = {v!r} is not a colour 0-9"
    return None


def is_answer_grid(grid: np.ndarray) -> bool:
    """A predicted grid that can stand as an attempt (2-D, 1..30 on each side)."""
    g = np.asarray(grid)
    return g.ndim == 2 and 1 <= g.shape[0] <= MAX_SIDE and 1 <= g.shape[1] <= MAX_SIDE


def validate_submission(sub, expected: dict[str, int]) -> None:
    """Raise ``SubmissionError`` unless ``sub`` is a submission answering exactly the tasks of
    ``expected`` (task id -> its number of test inputs)."""
    if not isinstance(sub, dict):
        raise SubmissionError(f"top level is {type(sub).__name__}, expected an object of tasks")
    missing = [t for t in expected if t not in sub]
    if missing:
        raise SubmissionError(f"{len(missing)} task(s) missing, first {missing[0]}")
    extra = [t for t in sub if t not in expected]
    if extra:
        raise SubmissionError(f"task {extra[0]} is not in the challenges")
    for tid, n in expected.items():
        entries = sub[tid]
        if not isinstance(entries, list) or len(entries) != n:
            got = len(entries) if isinstance(entries, list) else type(entries).__name__
            raise SubmissionError(f"task {tid}: {got} answers for {n} test inputs")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or set(entry) != set(ATTEMPTS):
                raise SubmissionError(f"task {tid} test {i}: expected exactly {list(ATTEMPTS)}")
            for a in ATTEMPTS:
                why = grid_problem(entry[a])
                if why:
                    raise SubmissionError(f"task {tid} test {i} {a}: {why}")


def write_submission(path: str | Path, sub: dict, expected: dict[str, int]) -> Path:
    """Validate, write atomically (a failed write leaves any earlier file intact), and check
    the file as written."""
    validate_submission(sub, expected)
    path = write_output(Path(path), json.dumps(sub, separators=(",", ":")), WriteFailed)
    validate_submission(json.loads(path.read_text(encoding="utf-8")), expected)
    return path
