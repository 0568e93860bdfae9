"""``hrm-fast ablate``: do the loss penalties and the probe do their job? (docs/safeguards.md)

Trains one short run per (variant, seed) with the preset's model and data and the loss weights
the variant names, probes input sensitivity at fixed steps, and writes ``DIR/ablation.json``
(one row per variant x seed x probe point), ``DIR/ablation.png`` (the curves) and a table.

Variants: ``all`` (the preset's weights), ``none`` (no penalties), ``div`` / ``dist`` / ``halt``
(that penalty alone, at the preset's weight), a weight point such as ``w_div=1.0`` (``all`` with
that one weight changed, so a weight sweep shares one table, one plot and the same seeds), and
the control ``shuffled``: every penalty on,
but each example's input is swapped with another example's, so the labels cannot be predicted
from the input and a healthy learner becomes input-invariant. At the last probe point of every
run two more invariant controls are probed on copies of the model: ``zero_head`` (output head
zeroed) and ``zero_embed`` (token embeddings zeroed). The probe always draws true
input-answer pairs (for ``shuffled`` too), so its input gain says what the model learnt.

The JSON is rewritten atomically after every run, and a rerun with the same settings skips the
runs it already holds, so an interrupted sweep loses at most the run in flight.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from hrm_fast.config import RunConfig
from hrm_fast.errors import UserError
from hrm_fast.files import prepare_dir

VARIANTS = ("all", "none", "div", "dist", "halt", "shuffled")
ROW_KEYS = (
    "variant", "seed", "step", "unique_classes", "label_classes", "probe_differ", "probe_tv",
    "probe_passed", "probe_gain", "lm_loss", "train_exact", "accuracy", "diversity",
)  # fmt: skip


WEIGHTS = ("w_div", "w_dist", "w_halt")


def parse_weight_point(variant: str) -> tuple[str, float] | None:
    """``"w_div=1.0"`` -> ``("w_div", 1.0)``; None for a named variant; UserError if malformed."""
    if "=" not in variant:
        return None
    name, _, value = variant.partition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = float("nan")
    if name not in WEIGHTS or not (math.isfinite(weight) and weight >= 0):
        raise UserError(f"--variants: {variant!r} is not a weight point; write e.g. w_div=1.0 "
                        f"with one of {', '.join(WEIGHTS)} and a value >= 0")  # fmt: skip
    return name, weight


def check_variant(variant: str) -> None:
    if variant not in VARIANTS and parse_weight_point(variant) is None:
        raise UserError(f"--variants: unknown variant {variant!r}; choose from "
                        f"{', '.join(VARIANTS)} or a weight point such as w_div=1.0")  # fmt: skip


def variant_config(base: RunConfig, variant: str, seed: int, steps: int) -> RunConfig:
    check_variant(variant)
    cfg = copy.deepcopy(base)
    lw = cfg.loss
    weights = {"div": lw.w_div, "dist": lw.w_dist, "halt": lw.w_halt}
    point = parse_weight_point(variant)
    if point is not None:
        setattr(lw, point[0], point[1])
    elif variant in ("div", "dist", "halt"):
        lw.w_div, lw.w_dist, lw.w_halt = (weights[k] if k == variant else 0.0 for k in weights)
    elif variant == "none":
        lw.w_div = lw.w_dist = lw.w_halt = 0.0
    cfg.train.seed = seed
    cfg.train.steps = steps
    cfg.train.epochs = 0  # the ablation counts in steps, whatever the preset's epochs
    return cfg


def _shuffle_inputs(sampler):
    """Make the sampler pair each example's labels with another example's input; returns the
    unshuffled draw, which the probe keeps using (its input gain needs true input-answer pairs,
    as in a real run)."""
    sample = sampler.sample

    def shuffled(batch_size: int):
        batch = sample(batch_size)
        perm = torch.roll(torch.arange(batch_size, device=batch["inputs"].device), 1)
        return {**batch, "inputs": batch["inputs"][perm]}

    sampler.sample = shuffled
    return sample


def _probe(trainer, source, model=None):
    from hrm_fast.probe import run_probe

    if model is None:
        return trainer.probe(source)
    t = trainer.cfg.train
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed + trainer.step_count)
        return run_probe(model, source, t.probe_pairs, t.probe_min_differ,
                         t.probe_min_tv, generator_seed=t.seed)  # fmt: skip


def _controls(trainer) -> dict[str, object]:
    """Input-invariant copies of the trained model."""
    out = {}
    head = copy.deepcopy(trainer.model)
    with torch.no_grad():
        head.inner.lm_head.weight.zero_()
    out["zero_head"] = head
    emb = copy.deepcopy(trainer.model)
    with torch.no_grad():
        emb.inner.embed_tokens.embedding_weight.zero_()
    out["zero_embed"] = emb
    return out


def run_one(cfg: RunConfig, variant: str, probe_every: int, on_step=None) -> tuple[list, list]:
    """Train one variant; returns (rows, control rows)."""
    from hrm_fast.trainer.step import Trainer

    trainer = Trainer(cfg)
    probe_source = trainer.sampler.sample
    if variant == "shuffled":
        probe_source = _shuffle_inputs(trainer.sampler)
    seed, steps = cfg.train.seed, cfg.train.steps
    rows, controls = [], []

    def record(step: int, m: dict | None) -> None:
        r = _probe(trainer, probe_source)
        nan = float("nan")
        m = m or {}
        rows.append({
            "variant": variant, "seed": seed, "step": step,
            "unique_classes": m.get("unique_classes", nan),
            "label_classes": m.get("label_classes", nan), "probe_differ": r.frac_differ,
            "probe_tv": r.mean_tv, "probe_passed": r.passed, "probe_gain": r.input_gain,
            "lm_loss": m.get("lm_loss", nan),
            "train_exact": m.get("exact_accuracy", nan), "accuracy": m.get("accuracy", nan),
            "diversity": m.get("diversity", nan),
        })  # fmt: skip

    record(0, None)
    while trainer.step_count < steps:
        trainer.step()
        if on_step is not None:
            on_step()
        if trainer.step_count % probe_every == 0 or trainer.step_count == steps:
            record(trainer.step_count, trainer.read_metrics())
    for name, model in _controls(trainer).items():
        r = _probe(trainer, probe_source, model)
        controls.append({"control": name, "variant": variant, "seed": seed, "step": steps,
                         "probe_differ": r.frac_differ, "probe_tv": r.mean_tv,
                         "probe_passed": r.passed, "probe_gain": r.input_gain})  # fmt: skip
    return rows, controls


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    clean = {k: v for k, v in payload.items() if k not in ("rows", "controls")}
    clean["rows"] = [{k: _json_safe(v) for k, v in r.items()} for r in payload["rows"]]
    clean["controls"] = [{k: _json_safe(v) for k, v in r.items()} for r in payload["controls"]]
    tmp.write_text(json.dumps(clean, indent=1))
    os.replace(tmp, path)


def summary_table(rows: list[dict], controls: list[dict]) -> str:
    """Per variant, at the last step: mean (min..max over seeds) of each column."""
    last = max((r["step"] for r in rows), default=0)
    lines = ["variant      seeds  step  uniq (min..max)   differ (min..max)  tv (min..max)        "
             "input gain (min..max)   lm_loss  exact  probe pass"]  # fmt: skip
    for v in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == v and r["step"] == last]
        if not rs:
            continue

        def col(k, fmt, rs=rs):  # rows recorded before a column existed lack it
            xs = [r[k] for r in rs if r.get(k) is not None and math.isfinite(r[k])]
            if not xs:
                return "-"
            lo, hi = fmt.format(min(xs)), fmt.format(max(xs))
            return f"{fmt.format(statistics.mean(xs))} ({lo}..{hi})"

        def mean(k, fmt, rs=rs):
            xs = [r[k] for r in rs if r.get(k) is not None and math.isfinite(r[k])]
            return fmt.format(statistics.mean(xs)) if xs else "-"

        passed = sum(bool(r["probe_passed"]) for r in rs)
        lines.append(
            f"{v:12s} {len(rs):5d} {last:5d}  {col('unique_classes', '{:.1f}'):16s} "
            f"{col('probe_differ', '{:.2f}'):18s} {col('probe_tv', '{:.3f}'):20s} "
            f"{col('probe_gain', '{:+.3f}'):23s} {mean('lm_loss', '{:.3f}'):8s} "
            f"{mean('train_exact', '{:.2f}'):6s} {passed}/{len(rs)}"
        )
    for name in dict.fromkeys(c["control"] for c in controls):
        cs = [c for c in controls if c["control"] == name]
        passed = sum(bool(c["probe_passed"]) for c in cs)
        tv = max(c["probe_tv"] for c in cs)
        dif = max(c["probe_differ"] for c in cs)
        lines.append(f"{name:12s} {len(cs):5d} {last:5d}  (control)   max differ {dif:.2f}, "
                     f"max tv {tv:.4f}, probe pass {passed}/{len(cs)}")  # fmt: skip
    return "\n".join(lines)


def paired_table(rows: list[dict], baseline: str = "none") -> str:
    """Each variant against ``baseline`` at the last step, seed by seed (a seed fixes the data
    order and the initial weights, so the pair differs only in the loss weights): the mean
    difference of each column and in how many seeds the variant has more unique classes."""
    last = max((r["step"] for r in rows), default=0)
    at_last = {(r["variant"], r["seed"]): r for r in rows if r["step"] == last}
    base = {s: r for (v, s), r in at_last.items() if v == baseline}
    if not base:
        return ""
    lines = [f"paired with {baseline!r} at step {last} (variant minus {baseline}, same seed)",
             "variant        pairs  d_uniq (min..max)     more uniq  d_differ  d_tv     "
             "d_lm_loss  d_pixel_acc"]  # fmt: skip

    def diffs(pairs, key):
        out = [a[key] - b[key] for a, b in pairs if a[key] is not None and b[key] is not None]
        return [x for x in out if math.isfinite(x)]

    for v in dict.fromkeys(r["variant"] for r in rows):
        pairs = [(r, base[s]) for (vv, s), r in at_last.items() if vv == v and s in base]
        if v == baseline or not pairs:
            continue
        du = diffs(pairs, "unique_classes")
        more = sum(x > 0 for x in du)

        def m(key, pairs=pairs):
            xs = diffs(pairs, key)
            return f"{statistics.mean(xs):+.3f}" if xs else "-"

        span = f"{statistics.mean(du):+.2f} ({min(du):+.2f}..{max(du):+.2f})" if du else "-"
        lines.append(f"{v:14s} {len(pairs):5d}  {span:21s} {more:3d}/{len(du):<5d} "
                     f"{m('probe_differ'):9s} {m('probe_tv'):8s} {m('lm_loss'):10s} "
                     f"{m('accuracy')}")  # fmt: skip
    return "\n".join(lines) if len(lines) > 2 else ""


THRESHOLDS = {"probe_differ": (0.05, 0.1, 0.25, 0.5, 0.75),
              "probe_tv": (1e-4, 1e-3, 0.01, 0.05, 0.1, 0.2),
              "probe_gain": (0.02, 0.05, 0.1, 0.2)}  # fmt: skip


def separation_table(rows: list[dict], controls: list[dict]) -> str:
    """The probe as a classifier. Trained: every probe point of a non-shuffled variant (step 0
    included: a fresh model must pass). Invariant: the zeroed controls and the shuffled
    variant's last point. Per criterion and threshold: the fraction of trained points that
    pass it and of invariant points that fail it."""
    last = max((r["step"] for r in rows), default=0)
    trained = [r for r in rows if r["variant"] != "shuffled"]
    invariant = list(controls) + [
        r for r in rows if r["variant"] == "shuffled" and r["step"] == last
    ]
    if not trained or not invariant:
        return ""
    lines = [f"probe separation: {len(trained)} trained-model points, {len(invariant)} invariant",
             "criterion      threshold  trained pass  invariant fail"]  # fmt: skip
    for key, ths in THRESHOLDS.items():
        tr, inv = trained, invariant
        if key == "probe_gain":  # a fresh model gains nothing yet: trained points after step 0
            tr = [r for r in trained if r["step"] > 0 and r.get(key) is not None]
            inv = [r for r in invariant if r.get(key) is not None]
            if not tr or not inv:
                continue
            lines.append(f"probe_gain: {len(tr)} trained points after step 0, {len(inv)} invariant")
        for th in ths:
            ok = sum(r[key] >= th for r in tr) / len(tr)
            caught = sum(r[key] < th for r in inv) / len(inv)
            lines.append(f"{key:14s} {th:9g}  {ok:12.2f}  {caught:14.2f}")
        lo = min(r[key] for r in tr)
        hi = max(r[key] for r in inv)
        lines.append(f"{key:14s} lowest trained {lo:.4g}, highest invariant {hi:.4g}")
    return "\n".join(lines)


def warning_table(rows: list[dict], probe_shrink: float) -> str:
    """Replays the ``probe_margin`` early warning (hrm_fast/early_warning.py) over each run's
    probe points: in how many trained and shuffled-input runs it would have fired."""
    import types

    from hrm_fast.early_warning import CollapseWatch

    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        runs.setdefault((r["variant"], r["seed"]), []).append(r)
    fired = {"trained": [0, 0], "shuffled": [0, 0]}
    for (variant, _), rs in runs.items():
        watch = CollapseWatch(0.0, 1, probe_shrink)
        warned = False
        for r in sorted(rs, key=lambda r: r["step"]):
            report = types.SimpleNamespace(mean_tv=r["probe_tv"], passed=r["probe_passed"],
                                           step=r["step"], min_tv=1.0)  # fmt: skip
            warned |= watch.on_probe(report) is not None
        kind = "shuffled" if variant == "shuffled" else "trained"
        fired[kind][0] += warned
        fired[kind][1] += 1
    parts = [f"{kind} runs {n}/{total}" for kind, (n, total) in fired.items() if total]
    return f"probe_margin warning (TV < {probe_shrink:g} x previous probe): " + ", ".join(parts)


def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error over seeds (0 for one seed)."""
    if len(values) < 2:
        return statistics.mean(values), 0.0
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def plot(rows: list[dict], path: Path, baseline: str = "none") -> None:
    """Panels of raw curves (the probe's input gain where rows have it) plus the paired one:
    unique classes minus ``baseline``'s at the same seed and step (seeds vary more than
    variants do, so pairs show the effect)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def finite(xs):
        return [x for x in xs if x is not None and math.isfinite(x)]

    panels = [("unique_classes", "unique argmax classes"), ("probe_differ", "probe: grids differ"),
              ("probe_tv", "probe: mean TV"), ("lm_loss", "lm loss")]  # fmt: skip
    if any(r.get("probe_gain") is not None for r in rows):  # recorded from this version on
        panels.append(("probe_gain", "probe: input gain (nats)"))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4 * (len(panels) + 1), 3.8))
    paired = axes[-1]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    base_uniq = {(r["seed"], r["step"]): r["unique_classes"] for r in rows
                 if r["variant"] == baseline and r["unique_classes"] is not None}  # fmt: skip
    for i, v in enumerate(variants):
        colour = f"C{i % 10}"
        steps = sorted({r["step"] for r in rows if r["variant"] == v})
        for ax, (key, _) in zip(axes, panels, strict=False):
            xs, mean, se = [], [], []
            for s in steps:
                vals = finite(r.get(key) for r in rows if r["variant"] == v and r["step"] == s)
                if vals:
                    xs.append(s)
                    m, e = _mean_se(vals)
                    mean.append(m)
                    se.append(e)
            ax.plot(xs, mean, label=v, color=colour)
            ax.fill_between(xs, [m - e for m, e in zip(mean, se, strict=True)],
                            [m + e for m, e in zip(mean, se, strict=True)], color=colour,
                            alpha=0.12)  # fmt: skip
        if v == baseline:
            continue
        xs, mean, se = [], [], []
        for s in steps:
            diffs = finite(
                r["unique_classes"] - base_uniq[(r["seed"], s)]
                for r in rows
                if r["variant"] == v and r["step"] == s and (r["seed"], s) in base_uniq
                if r["unique_classes"] is not None
            )
            if diffs:
                xs.append(s)
                m, e = _mean_se(diffs)
                mean.append(m)
                se.append(e)
        paired.errorbar(xs, mean, yerr=se, color=colour, capsize=2, label=v)
    for ax, (_, title) in zip(axes, panels, strict=False):
        ax.set_title(title)
    paired.axhline(0.0, color="grey", lw=0.8)
    paired.set_title(f"unique classes minus {baseline!r}, same seed")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.suptitle("hrm-fast ablate: mean over seeds, band / bars = one standard error")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _comparable(value, other=None):
    """A config dict restricted to the fields both sides know (a field added by a later
    version of hrm-fast, at its default, does not make two runs different)."""
    if not isinstance(value, dict):
        return value
    keys = value.keys() if not isinstance(other, dict) else value.keys() & other.keys()
    return {k: _comparable(value[k], other.get(k) if isinstance(other, dict) else None)
            for k in keys}  # fmt: skip


def _load(path: Path, settings: dict) -> dict:
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if any(_comparable(old.get(k)) != _comparable(settings[k], old.get(k)) for k in settings):
        raise UserError(f"{path}: holds an ablation with other settings (preset, steps, "
                        "probe points or config)")  # fmt: skip
    return old


def ablate(
    base: RunConfig,
    preset: str,
    steps: int,
    seeds: int,
    out: str | Path,
    variants: list[str],
    probe_every: int,
    threads: int = 1,
    quiet: bool = False,
    merge: list[str] | None = None,
    first_seed: int = 0,
    baseline: str = "none",
) -> int:
    """Run (or resume) the ablation; ``merge``: other DIRs whose finished runs to take over
    (same settings), so a sweep split over several processes ends in one table and plot."""
    # fmt: skip
    from hrm_fast.progress import Progress

    if steps < 1 or seeds < 1 or probe_every < 1:
        raise UserError("--steps, --seeds and --probe-every must be >= 1")
    if not 0 <= first_seed <= 2**32 - seeds:
        raise UserError(f"--first-seed must be in [0, {2**32 - seeds}], got {first_seed}")
    if not variants:
        raise UserError("--variants: no variant given (a comma list such as all,none,div)")
    for v in variants:
        check_variant(v)
    check_variant(baseline)
    if threads > 0:
        torch.set_num_threads(threads)
    out = prepare_dir(out, "--out")  # before hours of training: a bad place is bad input
    path = out / "ablation.json"
    settings = {"preset": preset, "steps": steps, "probe_every": probe_every,
                "config": base.to_dict()}  # fmt: skip
    payload = {**settings, "rows": [], "controls": [], "runs_done": []}
    if path.exists():
        payload = _load(path, settings)
    done = {(v, s) for v, s in payload["runs_done"]}
    for other in merge or []:
        theirs = _load(Path(other) / "ablation.json", settings)
        for v, s in theirs["runs_done"]:
            if (v, s) in done:
                continue
            done.add((v, s))
            payload["runs_done"].append([v, s])
            payload["rows"] += [r for r in theirs["rows"] if (r["variant"], r["seed"]) == (v, s)]
            payload["controls"] += [
                c for c in theirs["controls"] if (c["variant"], c["seed"]) == (v, s)
            ]
    if merge:
        write_atomic(path, payload)
    seed_list = range(first_seed, first_seed + seeds)
    todo = [(v, s) for v in variants for s in seed_list if (v, s) not in done]
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if len(todo) < len(variants) * seeds:
        log(f"hrm-fast: {path} holds {len(variants) * seeds - len(todo)} finished runs; "
            f"{len(todo)} to go")  # fmt: skip
    progress = Progress(len(todo) * steps, 0, quiet)
    count = {"n": 0}
    t0 = time.perf_counter()
    for i, (v, s) in enumerate(todo):
        cfg = variant_config(base, v, s, steps)

        def tick(v=v, s=s, i=i):
            count["n"] += 1
            if count["n"] % 10 == 0:
                progress.update(count["n"], f"run {i + 1}/{len(todo)}: {v} seed {s}")

        rows, controls = run_one(cfg, v, probe_every, on_step=tick)
        payload["rows"] += rows
        payload["controls"] += controls
        payload["runs_done"].append([v, s])
        write_atomic(path, payload)
        last = rows[-1]
        progress.close()
        log(f"hrm-fast: {v} seed {s} done: uniq {last['unique_classes']:.1f} "
            f"differ {last['probe_differ']:.2f} tv {last['probe_tv']:.4f} "
            f"lm_loss {last['lm_loss']:.3f}")  # fmt: skip
    progress.close()
    payload = json.loads(path.read_text())
    rows = [r for r in payload["rows"] if r["variant"] in variants]
    controls = [c for c in payload["controls"] if c["variant"] in variants]
    plot(rows, out / "ablation.png", baseline)
    print(summary_table(rows, controls))
    paired = paired_table(rows, baseline)
    if paired:
        print(paired)
    sep = separation_table(rows, controls)
    if sep:
        print(sep)
    print(warning_table(rows, base.train.warn_probe_shrink))
    log(f"hrm-fast: wrote {path} and {out / 'ablation.png'} in {time.perf_counter() - t0:.0f} s")
    return 0
