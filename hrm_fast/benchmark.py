"""``hrm-fast bench``: run the bench suite (``bench/``, pytest-benchmark) and print one table.

On a CPU the table has a training row for every CPU-sized preset, each measured in a process of
its own with that process's peak RSS (``bench/test_cpu_presets.py``). ``--against PATH``, the
side-by-side with the official code, is ``hrm_fast.bench_against``.

Measured numbers come from pytest-benchmark; the end-to-end rows also show the roofline
*ceiling* for the same config (``hrm_fast.roofline``, datasheet peaks: never a measurement) and,
on a GPU with a known datasheet, the MFU. Results are kept as JSON under ``bench/results/``
(named by date, device and a short host id) and at ``--json`` if given.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from hrm_fast.errors import UserError, WriteFailed
from hrm_fast.files import prepare_dir, write_output

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
CPU_CEILING_GPU = "rtx4090-laptop"  # on CPU, show the user's target GPU's ceiling for reference


def bench_dir() -> Path:
    if not (BENCH_DIR / "conftest.py").is_file():
        raise UserError(
            f"{BENCH_DIR}: bench suite not found (it ships with the source tree, not the wheel; "
            "run from a git checkout with `pip install -e .`)"
        )
    return BENCH_DIR


def host_id() -> str:
    return hashlib.sha1(platform.node().encode()).hexdigest()[:8]


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _fmt_bytes(b: int | None) -> str:
    if b is None:
        return "-"
    return f"{b / 2**20:.0f} MiB"


def _config_for(info: dict):
    from hrm_fast.presets import from_name

    cfg = from_name(info.get("preset", "seed"))
    if info.get("batch_size"):
        cfg.train.batch_size = int(info["batch_size"])
    return cfg


def rows_from_json(data: dict) -> list[dict]:
    """One row per benchmark from a pytest-benchmark JSON (measured values + ceilings)."""
    from hrm_fast import roofline

    rows = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {}) or {}
        stats = b.get("stats") or {}
        mean = stats.get("mean")
        items = info.get("items_per_call", 1)
        unit = info.get("unit", "it/s")
        device = info.get("device", "?")
        row = {
            "benchmark": b.get("name", "?"),
            "kind": info.get("kind", "?"),
            "device": device,
            "mean_s": mean,
            "rounds": stats.get("rounds"),
            "throughput": items / mean if mean else None,
            "unit": unit,
            "peak_mem_bytes": info.get("peak_mem_bytes"),
            "peak_mem_label": info.get("peak_mem_label"),
            "ceiling_it_s": None,
            "ceiling_gpu": None,
            "mfu": None,
        }
        if row["kind"] == "train":
            cfg = _config_for(info)
            gpu_name = ((info.get("env") or {}).get("gpu") or {}).get("name")
            key = gpu_name if device == "cuda" and gpu_name else CPU_CEILING_GPU
            try:
                peak = roofline.gpu_peak(key)
            except KeyError:
                peak = None
            if peak is not None:
                row["ceiling_it_s"] = roofline.ceiling_it_s(cfg, peak)
                row["ceiling_gpu"] = peak.name
                if device == "cuda" and row["throughput"]:
                    row["mfu"] = roofline.mfu(row["throughput"], cfg, peak)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = ["benchmark", "device", "mean time", "throughput (measured)", "peak memory",
            "ceiling (roofline, not measured)", "MFU"]  # fmt: skip
    body = []
    for r in rows:
        tp = "-" if r["throughput"] is None else f"{_fmt_rate(r['throughput'])} {r['unit']}"
        ceil = "-"
        if r["ceiling_it_s"] is not None:
            ceil = f"{r['ceiling_it_s']:.1f} it/s ceiling @ {r['ceiling_gpu']}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        mem = _fmt_bytes(r["peak_mem_bytes"])
        if r["peak_mem_bytes"] is not None and r["device"] == "cpu":
            # The CPU preset rows run each in a process of their own; the rest share pytest's.
            own = "own process" in (r["peak_mem_label"] or "")
            mem += " (ru_maxrss, own process)" if own else " (ru_maxrss)"
        body.append([r["benchmark"], r["device"], _fmt_time(r["mean_s"]), tp, mem, ceil, mfu])
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
    out = [line(head), "  ".join("-" * w for w in widths)] + [line(c) for c in body]
    out.append(
        "throughput = items per call / mean time, measured here; 'ceiling' = 1 / max(FLOPs / "
        "peak FLOP/s, min bytes / peak GB/s) from datasheet peaks (hrm_fast.roofline)"
    )
    return "\n".join(out)


# --------------------------------------------------------------------------- against the last run

# A row this much slower than the same row of the last run on this host is flagged. Time on a
# shared CPU moves with load (docs/performance.md), so its bar is higher than memory's; only
# own-process peaks are compared, since a cumulative peak depends on what ran before it. Rows
# under a millisecond (``--quick``'s kernels) move by more than the bar from run to run.
SLOWER, BIGGER, MIN_TIMED_S = 1.25, 1.10, 1e-3


def previous_results(device: str, quick: bool) -> tuple[Path, list[dict]] | None:
    """The newest saved suite table of this host and device at the same ``--quick``."""
    results = bench_dir() / "results"
    for path in sorted(results.glob(f"*-{device}-{host_id()}.json"), reverse=True):
        try:
            meta = json.loads(path.read_text()).get("hrm_fast") or {}
        except (OSError, ValueError, AttributeError):
            continue  # a torn or foreign file is no baseline
        if meta.get("device") == device and meta.get("quick") == quick and meta.get("table"):
            return path, meta["table"]
    return None


def regressions(rows: list[dict], previous: list[dict]) -> list[str]:
    """One line per row slower (time) or bigger (own-process peak memory) than last time."""
    before = {r.get("benchmark"): r for r in previous}
    out = []
    for r in rows:
        p = before.get(r["benchmark"])
        if p is None:
            continue
        now, then = r.get("mean_s"), p.get("mean_s")
        if now and then and min(now, then) >= MIN_TIMED_S and now / then > SLOWER:
            out.append(f"{r['benchmark']}: {now / then:.2f}x slower "
                       f"({_fmt_time(then)} -> {_fmt_time(now)})")  # fmt: skip
        own = "own process" in str(r.get("peak_mem_label"))
        mem, mem_then = r.get("peak_mem_bytes"), p.get("peak_mem_bytes")
        if own and mem and mem_then and mem / mem_then > BIGGER:
            out.append(f"{r['benchmark']}: peak memory {mem / mem_then:.2f}x "
                       f"({_fmt_bytes(mem_then)} -> {_fmt_bytes(mem)})")  # fmt: skip
    return out


def format_regressions(found: list[str], baseline: Path | None) -> str:
    if baseline is None:
        return "no earlier run of this bench on this host to compare with"
    if not found:
        return (f"against {baseline.name}: no row {SLOWER}x slower or (own-process memory) "
                f"{BIGGER}x bigger")  # fmt: skip
    lines = [f"against {baseline.name}, slower than {SLOWER}x or bigger than {BIGGER}x:"]
    return "\n".join(lines + [f"  {x}" for x in found])


def run_suite(device: str, quick: bool, json_out: Path) -> int:
    # --benchmark-quiet: pytest-benchmark's own tables are left out; we print one table.
    cmd = [sys.executable, "-m", "pytest", str(bench_dir()), f"--device={device}",
           f"--benchmark-json={json_out}", "--benchmark-quiet", "-q",
           "-p", "no:cacheprovider"]  # fmt: skip
    if quick:
        cmd.append("--quick")
    return subprocess.call(cmd, cwd=str(bench_dir().parent))


def save_results(data: dict, device: str, extra: Path | None) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = bench_dir() / "results" / f"{stamp}-{device}-{host_id()}.json"
    text = json.dumps(data, indent=2)
    write_output(path, text, WriteFailed)
    if extra is not None:
        write_output(extra, text, WriteFailed)
    return path


# --------------------------------------------------------------------------- data parallel


def data_parallel_bench(device: str, nproc: int, quick: bool, extra: Path | None) -> int:
    """1 rank vs ``nproc`` ranks (torchrun) at the same batch per rank: step time, scaling
    efficiency, bytes and time of the step's collectives (``bench/dp_step.py``)."""
    import os

    if nproc < 2:
        raise UserError(f"--nproc {nproc}: expected 2 or more ranks")
    if device == "cuda":
        import torch

        if torch.cuda.device_count() < nproc:
            raise UserError(f"--nproc {nproc}: only {torch.cuda.device_count()} GPU(s) here")
    preset = "smoke" if device == "cpu" or quick else "seed"
    steps = ["--steps", "5", "--warmup", "2"] if quick else ["--steps", "20", "--warmup", "3"]
    # On a CPU every rank gets one thread, so N ranks use N cores and 1 rank uses one.
    env = dict(os.environ, OMP_NUM_THREADS="1") if device == "cpu" else dict(os.environ)
    script = str(bench_dir() / "dp_step.py")
    recs = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, nproc):
            out = Path(tmp) / f"dp{world}.json"
            launch = [sys.executable]
            if world > 1:
                launch += ["-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={world}"]  # fmt: skip
            cmd = launch + [script, "--device", device, "--preset", preset, "--json", str(out)]
            code = subprocess.call(cmd + steps, env=env, cwd=str(bench_dir().parent))
            if code != 0 or not out.exists():
                raise UserError(f"data-parallel bench with {world} rank(s) failed (exit {code})")
            recs.append(json.loads(out.read_text()))
    one, many = recs
    many["scaling_efficiency"] = one["step_s"] / many["step_s"]
    comm = many["allreduce_s"] + many["puzzle_gather_s"] + many["loss_stats_s"]
    many["comm_s"] = comm
    text = format_dp_table(one, many)
    data = {"hrm_fast": {"kind": "data_parallel", "device": device, "quick": quick},
            "one_rank": one, "n_ranks": many, "table": text}  # fmt: skip
    path = save_results(data, f"{device}-dp{nproc}", extra)
    print()
    print(text)
    print(f"\nresults: {path}" + (f" and {extra}" if extra else ""))
    return 0


def format_dp_table(one: dict, many: dict) -> str:
    n = many["world"]
    lines = [
        f"data parallel, measured: {many['preset']} preset, batch {one['batch_per_rank']} per "
        f"rank, {many['device']} ({many['backend']}), {one['torch_threads']} thread(s) per rank",
        f"{'ranks':>5}  {'global batch':>12}  {'step time':>10}  {'examples/s':>10}  "
        f"{'efficiency':>10}  {'all-reduce/step':>16}  {'comm time/step':>15}",
    ]
    for r in (one, many):
        eff = "1.00 (base)" if r is one else f"{r['scaling_efficiency']:.2f}"
        ar = "-" if r is one else f"{r['allreduce_bytes'] / 1e6:.2f} MB"
        comm = "-" if r is one else _fmt_time(r["comm_s"])
        lines.append(
            f"{r['world']:>5}  {r['global_batch']:>12}  {_fmt_time(r['step_s']):>10}  "
            f"{r['global_batch'] / r['step_s']:>10.1f}  {eff:>10}  {ar:>16}  {comm:>15}"
        )
    lines.append(
        f"efficiency = 1-rank step time / {n}-rank step time (same batch per rank). comm time = "
        f"the step's {many['collectives_per_step']} collectives timed alone: gradient all-reduce "
        f"{_fmt_time(many['allreduce_s'])}, puzzle-row gather "
        f"{_fmt_time(many['puzzle_gather_s'])} ({many['puzzle_gather_bytes']} B), loss batch "
        f"statistics {_fmt_time(many['loss_stats_s'])}"
    )
    return "\n".join(lines)


def main(args) -> int:
    from hrm_fast.device import resolve_device  # torch only when the command runs

    device = getattr(args, "device", "cpu") or "cpu"
    quick = bool(getattr(args, "quick", False))
    extra = Path(args.json) if getattr(args, "json", None) else None
    resolve_device(device)  # a clear error now, not a pytest failure later
    prepare_dir(bench_dir() / "results", "")  # output paths too, before minutes of benchmarks
    if extra is not None:
        if extra.is_dir():
            raise UserError(f"--json {extra}: is a directory, expected a file name")
        prepare_dir(extra.parent, "--json")
    nproc = int(getattr(args, "nproc", 0) or 0)
    if nproc:
        return data_parallel_bench(device, nproc, quick, extra)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "bench.json"
        code = run_suite(device, quick, raw)
        if not raw.exists():
            raise UserError(f"bench suite failed (pytest exit {code}) and wrote no results")
        data = json.loads(raw.read_text())
    rows = rows_from_json(data)
    last = previous_results(device, quick)  # before this run's own file is written
    found = regressions(rows, last[1]) if last else []
    data["hrm_fast"] = {
        "device": device, "quick": quick, "pytest_exit": code, "table": rows,
        "regressions": found, "baseline": last[0].name if last else None,
    }  # fmt: skip
    path = save_results(data, device, extra)
    print()
    print(format_table(rows))
    print()
    print(format_regressions(found, last[0] if last else None))
    print()
    from hrm_fast.presets import from_name
    from hrm_fast.roofline import format_ceilings

    print(format_ceilings(from_name("seed"), "seed"))
    print(f"\nresults: {path}" + (f" and {extra}" if extra else ""))
    return 0 if code == 0 else 1
