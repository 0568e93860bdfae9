"""``hrm-fast bench --against PATH``: hrm-fast's training step beside the official code's, at the
same config on the same device, in one run.

PATH is a local checkout of sapientinc/HRM or SamsungSAILMontreal/TinyRecursiveModels; the bench
imports and runs its Python, so point it at a checkout you trust. Each side lives in its own
worker process (``hrm_fast.bench_worker``): its peak memory is its own and nothing set
in one process reaches the other. After the warm-up steps the parent asks for one step of each
in turn (hrm-fast, official, hrm-fast, ...), the other side idle, and reports each side's
median step time, it/s, peak memory and the ratio official / hrm-fast, with the environment
record and both configs.

Equal work: the official model trains with its own ``ACTLossHead`` (stablemax CE, as in both
official ARC configs) and sparse sign-SGD, and torch's AdamW in place of AdamATan2 (a CUDA
extension); hrm-fast's side is built as ``hrm-fast train`` builds it, with ``--optimizer adamw``
and ``--ce stablemax``. The official side trains on one batch from hrm-fast's sampler, while
hrm-fast samples and augments a fresh batch inside every step it times.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import statistics
import tempfile
from pathlib import Path

from hrm_fast.bench_worker import Worker
from hrm_fast.errors import UserError, WriteFailed
from hrm_fast.files import prepare_dir, write_output

# What a checkout must hold, by kind: the model file (and its class), then the files used beside it.
CHECKOUTS = {
    "hrm": ("sapientinc/HRM", "models/hrm/hrm_act_v1.py", "HierarchicalReasoningModel_ACTV1"),
    "trm": ("TinyRecursiveModels", "models/recursive_reasoning/trm.py",
            "TinyRecursiveReasoningModel_ACTV1"),
}  # fmt: skip
SHARED_FILES = ("models/losses.py", "models/sparse_embedding.py", "models/layers.py")
DEFAULT_PRESET = {"hrm": "seed", "trm": "trm-arc1"}
# Python packages the official model code imports (a checkout's requirements.txt lists more,
# for its data and logging, which the bench does not run).
NEEDS = {"hrm": ("pydantic",), "trm": ("pydantic", "einops")}
DTYPES = ("auto", "fp32", "bf16")


def find_checkout(path: str) -> tuple[str, Path]:
    """(kind, root) of an official checkout; a UserError naming PATH and the file looked for."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"--against {path}: not a directory (expected a sapientinc/HRM or "
                        "TinyRecursiveModels checkout)")  # fmt: skip
    kind = next((k for k, (_, f, _) in CHECKOUTS.items() if (root / f).is_file()), None)
    if kind is None:
        looked = " or ".join(f for _, f, _ in CHECKOUTS.values())
        raise UserError(f"--against {path}: not a sapientinc/HRM or TinyRecursiveModels "
                        f"checkout (no {looked})")  # fmt: skip
    repo, model_file, class_name = CHECKOUTS[kind]
    for rel in SHARED_FILES:
        if not (root / rel).is_file():
            raise UserError(f"--against {path}: no {rel} (is it a complete {repo} checkout?)")
    try:
        text = (root / model_file).read_text(errors="replace")
    except OSError as e:
        raise UserError(f"{root / model_file}: cannot read: {e.strerror}") from None
    if f"class {class_name}(" not in text:
        raise UserError(f"{root / model_file}: no class {class_name} (is it a {repo} checkout?)")
    return kind, root.resolve()


def check_requirements(kind: str) -> None:
    for package in NEEDS[kind]:
        if importlib.util.find_spec(package) is None:
            raise UserError(f"{package} is not installed; the official model code imports it: "
                            "pip install 'hrm-fast[against]'")  # fmt: skip


# --------------------------------------------------------------------------- the run


def default_steps(device: str, steps: int | None, warmup: int | None) -> tuple[int, int]:
    on_gpu = device.startswith("cuda")
    steps = steps if steps is not None else (50 if on_gpu else 10)
    warmup = warmup if warmup is not None else (10 if on_gpu else 2)
    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    if warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {warmup}")
    return steps, warmup


def summary(times: list[float], batch: int, finish: dict, info: dict, warm: list[float]) -> dict:
    median = statistics.median(times)
    if "compile" in finish:  # what ran in the measured steps, not what was planned
        info = {**info, "compile": finish.pop("compile")}
    return {
        "median_step_s": median, "min_step_s": min(times), "it_s": 1 / median,
        "examples_s": batch / median, "step_s": times, "warmup_step_s": warm, **finish,
        "info": info,
    }  # fmt: skip


def run(kind: str, root: Path, preset: str, batch: int, dtype: str, device: str, steps: int,
        warmup: int, threads: int, quiet: bool = False,
        official_compile: bool = False, compile_: str = "auto") -> dict:  # fmt: skip
    """Both sides built one after the other, warmed up, then stepped in turn."""
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    workers: list[Worker] = []
    with tempfile.TemporaryDirectory(prefix="hrm-fast-against-") as tmp:
        base = dict(preset=preset, batch_size=batch, dtype=dtype, device=device, threads=threads)
        batch_file = str(Path(tmp) / "batch.pt")
        try:
            say(f"building hrm-fast's side ({preset}, batch {batch}, {device}) ...")
            spec = {**base, "side": "ours", "against": True, "batch_file": batch_file,
                    "compile": compile_}  # fmt: skip
            ours = Worker("hrm-fast", spec, Path(tmp) / "ours.log")
            workers.append(ours)
            ours_info = ours.ready()
            say(f"  backend {ours_info['backend']}, dtype {ours_info['dtype']}, "
                f"compile {ours_info['compile']}, {ours_info['threads']} threads")  # fmt: skip
            say(f"building the official {CHECKOUTS[kind][0]} side ({root}) ...")
            spec = {**base, "side": "official", "kind": kind, "checkout": str(root),
                    "batch_file": batch_file, "dtype": ours_info["dtype"],
                    "compile": official_compile,
                    "seq_len": ours_info["seq_len"],
                    "num_puzzle_ids": ours_info["num_puzzle_ids"]}  # fmt: skip
            official = Worker("official", spec, Path(tmp) / "official.log")
            workers.append(official)
            official_info = official.ready()
            say(f"  attention {official_info['attention']}, dtype {official_info['dtype']}, "
                f"{official_info['threads']} threads")  # fmt: skip
            warm: dict[str, list[float]] = {"ours": [], "official": []}
            for i in range(warmup):
                for name, w in zip(("ours", "official"), workers, strict=True):
                    warm[name].append(w.step())
                say(f"warm-up {i + 1}/{warmup}: hrm-fast {warm['ours'][-1]:.3f} s, "
                    f"official {warm['official'][-1]:.3f} s")  # fmt: skip
            times: dict[str, list[float]] = {"ours": [], "official": []}
            for i in range(steps):
                a = ours.step()
                b = official.step()
                times["ours"].append(a)
                times["official"].append(b)
                say(f"step {i + 1}/{steps}: hrm-fast {a:.3f} s, official {b:.3f} s")
            ours_end = ours.finish()
            official_end = official.finish()
        finally:
            for w in workers:
                w.close()
    environment = ours_info.pop("environment", None)
    result = {
        "kind": "against", "official": CHECKOUTS[kind][0], "checkout": str(root),
        "preset": preset, "batch_size": batch, "dtype_flag": dtype, "device": device,
        "steps": steps, "warmup": warmup, "threads_flag": threads,
        "hrm_fast": summary(times["ours"], batch, ours_end, ours_info, warm["ours"]),
        "official_side": summary(
            times["official"], batch, official_end, official_info, warm["official"]
        ),
        "environment": environment,
    }  # fmt: skip
    theirs, ours = result["official_side"], result["hrm_fast"]
    result["ratio"] = theirs["median_step_s"] / ours["median_step_s"]
    return result


# --------------------------------------------------------------------------- the table


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f} MiB"


def format_table(r: dict) -> str:
    ours, theirs = r["hrm_fast"], r["official_side"]
    oi, ti = ours["info"], theirs["info"]
    label = "ru_maxrss" if r["device"] == "cpu" else "max allocated"
    head = ["side", "median step", "fastest", "it/s", "examples/s", f"peak memory ({label})",
            "loss"]  # fmt: skip
    body = [
        [name, f"{s['median_step_s']:.4g} s", f"{s['min_step_s']:.4g} s", f"{s['it_s']:.3g}",
         f"{s['examples_s']:.3g}", _mib(s.get("peak_mem_bytes")),
         "finite" if s.get("loss_finite") else "NOT finite"]
        for name, s in (("hrm-fast", ours), (f"official {r['official']}", theirs))
    ]  # fmt: skip
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    env = r.get("environment") or {}
    cpu = env.get("cpu_model") or "?"
    gpu = (env.get("gpu") or {}).get("name")
    out = [
        f"bench --against {r['checkout']}: preset {r['preset']}, batch {r['batch_size']}, "
        f"{r['device']}, median of {r['steps']} steps each after {r['warmup']} warm-up, "
        "alternated",
        f"  hrm-fast: backend {oi['backend']}, dtype {oi['dtype']}, compile {oi['compile']}, "
        f"{oi['optimizer']}, {oi['ce']} CE, ema {oi['ema']}, {oi['threads']} threads, "
        f"{oi['parameters']:,} parameters, host memory: {oi.get('host_memory', 'default')}, "
        f"attention {oi.get('attention', '?')}, matmul {oi.get('matmul', '?')}",
        f"  official: attention {ti['attention']}, dtype {ti['dtype']}, "
        f"compile {'on' if ti.get('compile') else 'off'}, {ti['optimizer']}, "
        f"{ti['ce']}, ema {ti['ema']}, {ti['threads']} threads, {ti['parameters']:,} parameters, "
        "host memory: the process's malloc as it is",
        f"  on {gpu + ' / ' if gpu else ''}{cpu}, torch {env.get('torch', '?')}, "
        f"hrm-fast {env.get('git_commit') or '?'}",
        "",
        line(head),
        "  ".join("-" * w for w in widths),
        *(line(c) for c in body),
        "",
        f"ratio official / hrm-fast (median step time): {r['ratio']:.2f}x",
    ]
    first = ours.get("warmup_step_s") or []
    if first and str(oi["compile"]).startswith("on"):  # the compile is paid once, untimed above
        out.append(
            f"hrm-fast's first warm-up step, compile included: {first[0]:.1f} s (inductor "
            "caches it: a second run on this machine compiles much faster)"
        )
    if oi["parameters"] != ti["parameters"]:  # the same model should have the same count
        out.append(f"note: the sides count {oi['parameters']:,} and {ti['parameters']:,} "
                   "network parameters: not the same model")  # fmt: skip
    return "\n".join(out)


# --------------------------------------------------------------------------- the command


def save(result: dict, device: str, kind: str, extra: Path | None) -> Path | None:
    from hrm_fast.benchmark import BENCH_DIR, host_id

    text = json.dumps(result, indent=2, default=str)
    path = None
    if (BENCH_DIR / "conftest.py").is_file():  # a source checkout keeps its results
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{device.replace(':', '')}-against-{kind}-{host_id()}.json"
        path = BENCH_DIR / "results" / name
        write_output(path, text, WriteFailed)
    if extra is not None:
        write_output(extra, text, WriteFailed)
    return path


def main(args) -> int:
    from hrm_fast.benchmark import BENCH_DIR
    from hrm_fast.device import resolve_device
    from hrm_fast.presets import from_name

    kind, root = find_checkout(args.against)
    check_requirements(kind)
    device = resolve_device(args.device or "auto")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: bench --against runs on cpu or cuda")
    device_name = str(device)
    preset = args.preset or DEFAULT_PRESET[kind]
    cfg = from_name(preset)
    if cfg.model.arch != kind:
        raise UserError(f"--preset {preset}: a {cfg.model.arch.upper()} model, but "
                        f"{args.against} is a {CHECKOUTS[kind][0]} checkout "
                        f"({kind.upper()})")  # fmt: skip
    batch = args.batch_size
    if batch is None:
        batch = cfg.train.batch_size if device.type == "cuda" else 2
    if batch < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch}")
    if args.dtype not in DTYPES:
        raise UserError(f"--dtype: expected {', '.join(DTYPES)}, got {args.dtype!r}")
    if args.threads is not None and args.threads < 0:
        raise UserError(f"--threads must be >= 0, got {args.threads}")
    steps, warmup = default_steps(device_name, args.steps, args.warmup)
    extra = Path(args.json) if args.json else None
    if extra is not None:
        if extra.is_dir():
            raise UserError(f"--json {extra}: is a directory, expected a file name")
        prepare_dir(extra.parent, "--json")
    if (BENCH_DIR / "conftest.py").is_file():
        prepare_dir(BENCH_DIR / "results", "")
    result = run(kind, root, preset, batch, args.dtype, device_name, steps, warmup,
                 args.threads or 0, official_compile=bool(args.official_compile),
                 compile_=args.compile)  # fmt: skip
    text = format_table(result)
    result["table"] = text
    path = save(result, device_name, kind, extra)
    print()
    print(text)
    where = [str(p) for p in (path, extra) if p is not None]
    if where:
        print(f"\nresults: {' and '.join(where)}")
    return 0
