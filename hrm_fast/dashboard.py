"""``hrm-fast report RUN [RUN ...]``: one PNG dashboard of a run's ``metrics.jsonl``.

It reads what is there, so it works on a run that is still training. A resumed run re-logs
the steps a killed run had written past its last checkpoint; for each step the last record
wins, which is what the resumed weights produced, and the curve stays one line. Lines that do
not parse (a run killed mid-write) and keys this version does not know are skipped and named in
a note under the plot. ``eval.json`` from ``hrm-fast eval`` adds the held-out scores.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hrm_fast.errors import UserError, WriteFailed
from hrm_fast.files import prepare_dir, write_output

# trainer.step.METRIC_KEYS and what the loop adds (not imported: the report needs no torch).
TRAIN_KEYS = (
    "loss", "lm_loss", "q_halt_loss", "q_continue_loss", "diversity", "distribution", "halt",
    "accuracy", "exact_accuracy", "unique_classes", "label_classes", "q_halt_accuracy",
    "grad_norm", "act_steps", "lr", "it_s",
)  # fmt: skip
PROBE_KEYS = (
    "pairs", "frac_differ", "mean_tv", "min_differ", "min_tv", "passed", "input_gain", "checkpoint",
)  # fmt: skip
# The held-out score during training (--eval-every; hrm_fast/trainer/heldout.py).
EVAL_KEYS = (
    "pass1", "pass2", "pixel_accuracy", "pair_pass1", "pair_pass2", "n_tasks", "n_test_pairs",
    "n_aug", "best_step", "best_pass2", "best_pixel_accuracy", "since_best", "improved",
)  # fmt: skip
LOSS_PARTS = ("lm_loss", "q_halt_loss", "q_continue_loss", "diversity", "distribution", "halt")
RUN_STYLES = ("-", "--", ":", "-.")
STYLE_NAMES = ("solid", "dashed", "dotted", "dash-dot")
COLOUR_NAMES = (  # matplotlib's C0..C9
    "blue", "orange", "green", "red", "purple", "brown", "pink", "grey", "olive", "cyan",
)  # fmt: skip
MIN_POINTS_TO_SMOOTH = 10
FAILED = "#d62728"
MAX_NOTES = 6  # lines of notes under the plot
FRACTION = (-0.03, 1.05)  # y range of panels that show a fraction


# --------------------------------------------------------------------------- reading


@dataclass
class RunData:
    path: Path
    name: str
    steps: np.ndarray  # int, ascending, unique
    train: dict[str, np.ndarray]  # TRAIN_KEYS -> float values at ``steps`` (NaN where absent)
    probes: list[dict]  # one per step, ascending
    config: dict | None = None
    eval: dict | None = None
    eval_png: Path | None = None
    notes: list[str] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # held-out eval records, one per step
    logged: set[str] = field(default_factory=set)  # TRAIN_KEYS present in some record
    label: str = ""  # in legends: the shortest path tail that tells the runs apart

    def section(self, name: str) -> dict:
        s = (self.config or {}).get(name)
        return s if isinstance(s, dict) else {}

    def config_get(self, section: str, key: str, default=None):
        return self.section(section).get(key, default)


def _parse_line(line: str) -> dict | None:
    """One JSON record, or None. A line that a killed run cut off and the resumed run then
    continued reads as ``<partial>{"event": ...}``: the complete record at its end is kept."""
    for start in (0, line.rfind('{"event"')):
        if start < 0:
            continue
        try:
            rec = json.loads(line[start:])
        except ValueError:
            continue
        return rec if isinstance(rec, dict) else None
    return None


# Beyond these a record is damaged, not a measurement: a step past the 9-digit checkpoint names,
# a value whose smoothing or axis scaling would overflow.
MAX_STEP = 999_999_999
MAX_VALUE = 1e30


def _number(v) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return math.nan
    v = float(v)
    return v if abs(v) <= MAX_VALUE else math.nan


def _step(rec: dict) -> int | None:
    s = rec.get("step")
    if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s):
        return None
    return int(s) if 0 <= s <= MAX_STEP else None


def read_metrics(path: Path) -> tuple[dict[int, dict], dict[int, dict], dict[int, dict], list[str]]:
    """Train, probe and held-out eval records by step (the last one for a step wins), and
    notes."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    lines = text.split("\n")
    cut_last = bool(lines[-1].strip())  # no newline at the end: cut off, or being written
    train: dict[int, dict] = {}
    probes: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    bad: list[int] = []
    unknown_keys: set[str] = set()
    unknown_events: set[str] = set()
    selfchecks: list[str] = []
    replayed = 0
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        rec = _parse_line(line)
        step = _step(rec) if rec is not None else None
        if step is None:
            bad.append(i)
            continue
        event = rec.get("event")
        if event == "train":
            replayed += step in train
            train[step] = rec
            unknown_keys |= set(rec) - {"event", "step", *TRAIN_KEYS}
        elif event == "probe":
            probes[step] = rec
            unknown_keys |= set(rec) - {"event", "step", *PROBE_KEYS}
        elif event == "selfcheck":  # the start-up check's line (one per start or resume)
            note = "self-check passed" if rec.get("passed") else str(rec.get("note"))
            selfchecks.append(note if len(note) <= 200 else note[:197] + "...")
        elif event == "eval":
            evals[step] = rec
            unknown_keys |= set(rec) - {"event", "step", *EVAL_KEYS}
        else:
            unknown_events.add(str(event))
    notes = selfchecks[-1:]  # the latest start's check: what the run trains on now
    if bad == [len(lines)] and cut_last:
        notes.append("skipped 1 unreadable line (the last, cut off mid-write)")
    elif bad:
        more = ", ..." if len(bad) > 5 else ""
        listed = ", ".join(map(str, bad[:5])) + more
        notes.append(f"skipped {len(bad)} unreadable line{'s' if len(bad) > 1 else ''} ({listed})")
    if replayed:
        notes.append(f"resumed: {replayed} step(s) logged twice, the later record kept")
    if unknown_keys:
        notes.append(f"ignored keys this version does not know: {', '.join(sorted(unknown_keys))}")
    if unknown_events:
        notes.append(f"ignored events: {', '.join(sorted(unknown_events))}")
    return train, probes, evals, notes


def _read_json(path: Path, notes: list[str]) -> dict | None:
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        notes.append(f"{path.name} unreadable ({e.__class__.__name__}); left out")
        return None
    if not isinstance(d, dict):
        notes.append(f"{path.name} is not a JSON object; left out")
        return None
    return d


def load_run(run: str | Path) -> RunData:
    run = Path(run)
    if not run.exists():
        raise UserError(f"{run}: no such directory")
    if not run.is_dir():
        raise UserError(f"{run}: not a run directory (give the --out of hrm-fast train)")
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: no such file (training writes it from its first step)")
    train, probes, evals, notes = read_metrics(path)
    if not train and not probes:
        raise UserError(f"{path}: no readable records ({notes[0]})" if notes else
                        f"{path}: no metrics records yet")  # fmt: skip
    steps = np.array(sorted(train), dtype=np.int64)
    values = {k: np.array([_number(train[s].get(k)) for s in steps]) for k in TRAIN_KEYS}
    data = RunData(run, str(run), steps, values, [probes[s] for s in sorted(probes)], notes=notes)
    data.evals = [evals[s] for s in sorted(evals)]
    data.logged = {k for rec in train.values() for k in rec if k in TRAIN_KEYS}
    data.config = _read_json(run / "config.json", notes)
    data.eval = _read_json(run / "eval.json", notes)
    if data.eval is not None and not isinstance(data.eval.get("overall"), dict):
        notes.append("eval.json has no 'overall' scores; left out")
        data.eval = None
    if (run / "eval.png").is_file():
        data.eval_png = run / "eval.png"
    if not train:
        notes.append("no train records yet: only the probe is drawn")
    return data


def _is_board(d: dict) -> bool:
    src = str(d.get("source", ""))
    return src in ("sudoku-gen", "maze-gen") or src.startswith(("sudoku:", "maze:"))


def _board_data(d: dict) -> str:
    if str(d.get("source")).endswith("-gen"):
        return f" ({d.get('gen_train')} boards, {d.get('gen_test')} held out)"
    return ""


def config_summary(run: RunData) -> str:
    c = run.config
    if not c:
        return "no config.json"
    m, d, t = run.section("model"), run.section("data"), run.section("train")
    parts = [
        f"hidden {m.get('hidden_size')}, {m.get('num_heads')} heads",
        f"H {m.get('H_layers')} / L {m.get('L_layers')} layers, "
        f"{m.get('H_cycles')}x{m.get('L_cycles')} cycles, ACT <= {m.get('halt_max_steps')}",
        f"batch {t.get('batch_size')}, lr {t.get('lr')}",
        f"data {d.get('source')}"
        + (f" ({d.get('max_tasks')} tasks)" if d.get("max_tasks") else "")
        + (_board_data(d) if _is_board(d) else f" x {d.get('n_aug')} aug"),
        f"backend {t.get('backend')}"
        + (", SDPA attention" if t.get("attention") == "sdpa" else "")
        + f", dtype {t.get('dtype')}",
    ]
    return " | ".join(parts)


# --------------------------------------------------------------------------- drawing


def ema(y: np.ndarray, span: float) -> np.ndarray:
    """Exponential moving average that starts at the first finite value and steps over NaN."""
    a = 2.0 / (span + 1.0)
    out = np.full(len(y), np.nan)
    s = math.nan
    for i, v in enumerate(y):
        if math.isfinite(v):
            s = v if not math.isfinite(s) else s + a * (v - s)
        out[i] = s
    return out


def _plot_series(ax, x, y, colour, style, label, smooth: bool) -> bool:
    finite = np.isfinite(y)
    if not finite.any():
        return False
    if smooth and finite.sum() >= MIN_POINTS_TO_SMOOTH:
        ax.plot(x, y, color=colour, linestyle=style, alpha=0.25, linewidth=0.8)
        span = max(2.0, finite.sum() / 20)
        ax.plot(x, ema(y, span), color=colour, linestyle=style, linewidth=1.6, label=label)
    else:
        marker = "o" if finite.sum() <= 3 else None
        ax.plot(x, y, color=colour, linestyle=style, linewidth=1.4, marker=marker, label=label)
    return True


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.45",
            fontsize=9, wrap=True)  # fmt: skip


def _log_scale(ax) -> None:
    """Log y axis with plain tick labels ("0.02", "6"), not "6x10^0"."""
    from matplotlib.ticker import LogFormatterSciNotation

    class Plain(LogFormatterSciNotation):
        def __call__(self, x, pos=None):  # keep matplotlib's choice of which ticks get a label
            return f"{x:g}" if super().__call__(x, pos) else ""

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(Plain())
    ax.yaxis.set_minor_formatter(Plain(labelOnlyBase=False))


def _train_panel(ax, runs, title, series, smooth=True, log=False, hline=None, ylim=None) -> None:
    """``series``: [(key, label)]. One run: a colour per series. Several runs: a colour per
    run (one series) or a colour per series and a line style per run."""
    ax.set_title(title)
    drawn = False
    for r, run in enumerate(runs):
        for j, (key, label) in enumerate(series):
            many = len(series) > 1
            colour = f"C{j}" if many else f"C{r}"
            style = RUN_STYLES[r % len(RUN_STYLES)] if many and len(runs) > 1 else "-"
            # Several runs and series: the legend lists series (colours) and runs (styles).
            lab = (label if r == 0 else None) if many else (run.label if len(runs) > 1 else None)
            y = run.train[key]
            if log:
                y = np.where(y > 0, y, np.nan)
            drawn |= _plot_series(ax, run.steps, y, colour, style, lab, smooth)
        if len(series) > 1 and len(runs) > 1:
            ax.plot([], [], color="0.3", linestyle=RUN_STYLES[r % len(RUN_STYLES)], label=run.label)
    if not drawn:
        keys = [k for k, _ in series]
        logged = any(run.logged & set(keys) for run in runs)
        why = "logged, but NaN so far" if logged else "not in metrics.jsonl"
        _no_data(ax, f"{', '.join(keys)}: {why}")
        return
    if hline is not None:
        value, text = hline
        if value is not None and math.isfinite(value):
            ax.axhline(value, color="0.35", linestyle=":", linewidth=1)
            ax.annotate(text, (0.99, value), xycoords=("axes fraction", "data"), ha="right",
                        va="bottom", fontsize=7, color="0.35")  # fmt: skip
    if log:
        _log_scale(ax)
    if ylim is not None:
        ax.set_ylim(*ylim)  # None: that end stays automatic
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best", ncol=2 if len(series) > 3 else 1)


def _probe_panel(ax, runs, key, title, threshold_key, log=False, ylim=None) -> None:
    ax.set_title(title)
    drawn = False
    for r, run in enumerate(runs):
        pr = [p for p in run.probes if math.isfinite(_number(p.get(key)))]
        if not pr:
            continue
        x = np.array([_step(p) for p in pr])
        y = np.array([_number(p[key]) for p in pr])
        if log:
            y = np.where(y > 0, y, np.nan)
        label = run.label if len(runs) > 1 else None
        ax.plot(x, y, color=f"C{r}", marker="o", markersize=4, linewidth=1.2, label=label)
        failed = np.array([p.get("passed") is False for p in pr])
        if failed.any():
            ax.plot(x[failed], y[failed], linestyle="none", marker="X", markersize=10,
                    color=FAILED, label="FAILED" if r == 0 else None)  # fmt: skip
        thr = _number(pr[-1].get(threshold_key))
        if not math.isfinite(thr):
            thr = _number(run.config_get("train", f"probe_{threshold_key}"))
        if math.isfinite(thr) and (not log or thr > 0):
            ax.axhline(thr, color=FAILED, linestyle="--", linewidth=1, alpha=0.8)
            ax.annotate(f"threshold {thr:g}", (0.99, thr), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=7, color=FAILED)  # fmt: skip
        drawn = True
    if not drawn:
        _no_data(ax, "no probe records yet")
        return
    if log:
        _log_scale(ax)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


EVAL_SCORES = (
    ("pass1", "pass@1"), ("pass2", "pass@2"), ("pair_pass1", "pair\npass@1"),
    ("pixel_accuracy", "pixel\nacc."),
)  # fmt: skip
# A Sudoku / maze eval.json (hrm_fast/board_eval.py): per-board exact, blank cells, all cells.
BOARD_EVAL_SCORES = (
    ("exact", "exact"), ("blank_accuracy", "blank\ncells"), ("cell_accuracy", "all\ncells"),
)  # fmt: skip


def _eval_scores(runs) -> tuple:
    boards = any((run.eval or {}).get("kind") in ("sudoku", "maze") for run in runs)
    return BOARD_EVAL_SCORES if boards else EVAL_SCORES


HELD_OUT_SERIES = (("pass2", "pass@2", "-"), ("pass1", "pass@1", "--"),
                   ("pixel_accuracy", "pixel acc.", ":"))  # fmt: skip


def _held_out_panel(ax, runs) -> None:
    """The held-out score during training (--eval-every): a line per score, a colour per run
    (a colour per score with one run); a star on each run's best checkpoint (RUN/best.pt) and
    a cross on ``hrm-fast eval``'s scores where eval.json exists."""
    ax.set_title("held-out eval during training (--eval-every)")
    for r, run in enumerate(runs):
        if not run.evals:
            continue
        x = np.array([_step(e) for e in run.evals])
        for j, (key, label, style) in enumerate(HELD_OUT_SERIES):
            y = np.array([_number(e.get(key)) for e in run.evals])
            colour = f"C{j}" if len(runs) == 1 else f"C{r}"
            lab = label if len(runs) == 1 else f"{label} ({run.label})"
            ax.plot(x, y, color=colour, linestyle=style, marker="o", markersize=3,
                    linewidth=1.3, label=lab)  # fmt: skip
        last = run.evals[-1]
        best = _step({"step": last.get("best_step")})
        hit = [e for e in run.evals if _step(e) == best]
        if hit:
            ax.plot([best], [_number(hit[0].get("pass2"))], marker="*", markersize=13,
                    color="0.15", linestyle="none",
                    label="best.pt" if r == 0 else None)  # fmt: skip
        o = (run.eval or {}).get("overall", {})
        step = _step(run.eval or {})
        if step is not None and math.isfinite(_number(o.get("pass2"))):
            ax.plot([step], [_number(o.get("pass2"))], marker="x", markersize=9, color="0.15",
                    linestyle="none", label="eval.json pass@2" if r == 0 else None)  # fmt: skip
    ax.set_ylim(*FRACTION)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(which="both", labelsize=8)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="best")


def _eval_panel(ax, runs) -> None:
    if any(run.evals for run in runs):
        _held_out_panel(ax, runs)
        return
    ax.set_title("held-out eval (hrm-fast eval)")
    with_eval = [(r, run) for r, run in enumerate(runs) if run.eval is not None]
    if not with_eval:
        _no_data(ax, "no eval.json yet:\nrun `hrm-fast eval RUN`\n(or train with --eval-every N)")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    width = 0.8 / len(with_eval)
    scores = _eval_scores(runs)
    x = np.arange(len(scores))
    for i, (r, run) in enumerate(with_eval):
        o = run.eval["overall"]
        vals = np.array([_number(o.get(k)) for k, _ in scores])
        pos = x + (i - (len(with_eval) - 1) / 2) * width
        step = run.eval.get("step")
        label = f"at step {step}" + (f" ({run.label})" if len(runs) > 1 else "")
        bars = ax.bar(pos, np.nan_to_num(vals), width, color=f"C{r}", label=label)
        for b, v in zip(bars, vals, strict=True):
            ax.annotate(f"{v:.2f}" if math.isfinite(v) else "n/a", (b.get_x() + b.get_width() / 2,
                        b.get_height()), ha="center", va="bottom", fontsize=7)  # fmt: skip
    ax.set_xticks(x, [lab for _, lab in scores], fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.legend(fontsize=7, loc="upper left")


def _label_runs(runs: list[RunData]) -> None:
    """Each run's label: its directory name, or as many trailing path parts as tell it apart."""
    parts = [run.path.resolve().parts for run in runs]
    for n in range(1, max(len(p) for p in parts) + 1):
        tails = ["/".join(p[-n:]) for p in parts]
        if len(set(tails)) == len(tails):
            break
    for run, tail in zip(runs, tails, strict=True):
        run.label = tail


def _title(runs: list[RunData]) -> str:
    lines = []
    for r, run in enumerate(runs):
        last = int(run.steps[-1]) if len(run.steps) else 0
        total = run.config_get("train", "steps")
        progress = f"step {last:,}" + (f" of {total:,}" if isinstance(total, int) else "")
        colour, style = COLOUR_NAMES[r % 10], STYLE_NAMES[r % len(RUN_STYLES)]
        prefix = f"[{colour} / {style}] " if len(runs) > 1 else ""
        lines.append(f"{prefix}{run.name}: {progress}\n{config_summary(run)}")
    return "\n".join(lines)


def build_figure(runs: list[RunData]):
    """The dashboard as a matplotlib Figure (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _label_runs(runs)
    notes = [f"{run.label}: {n}" if len(runs) > 1 else n for run in runs for n in run.notes]
    n_notes = min(len(notes), MAX_NOTES + 1)
    height = 12.5 + 0.45 * len(runs) + 0.15 * n_notes
    fig = Figure(figsize=(15, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(4, 3).ravel()
    cfg = runs[0]
    max_act = _number(cfg.config_get("model", "halt_max_steps"))
    clip = _number(cfg.config_get("train", "grad_clip"))
    _train_panel(axes[0], runs, "total loss", [("loss", "loss")])
    parts = [(k, k.replace("_loss", "").replace("_", "-")) for k in LOSS_PARTS]
    _train_panel(axes[1], runs, "loss parts (log scale)", parts, log=True)
    _train_panel(axes[2], runs, "training accuracy",
                 [("accuracy", "pixel"), ("exact_accuracy", "exact")], ylim=FRACTION)  # fmt: skip
    for run in runs:  # the held-out score where eval ran
        o = (run.eval or {}).get("overall", {})
        v, step = _number(o.get("pixel_accuracy", o.get("cell_accuracy"))), _step(run.eval or {})
        if math.isfinite(v) and step is not None:
            suffix = f" ({run.label})" if len(runs) > 1 else ""
            axes[2].plot([step], [v], marker="*", markersize=13, color="0.15",
                         linestyle="none", label="eval cell acc." + suffix)  # fmt: skip
            axes[2].legend(fontsize=7, loc="best")
    _train_panel(axes[3], runs, "unique classes per batch",
                 [("unique_classes", "predicted"), ("label_classes", "in the labels")])  # fmt: skip
    _train_panel(axes[4], runs, "mean ACT steps (halted examples)", [("act_steps", "ACT")],
                 hline=(max_act, "halt_max_steps"),
                 ylim=(0, None))  # fmt: skip
    if math.isfinite(max_act):  # room above the max for its label
        axes[4].set_ylim(top=max(axes[4].get_ylim()[1], max_act * 1.15))
    _train_panel(axes[5], runs, "q-halt accuracy", [("q_halt_accuracy", "q-halt")],
                 ylim=FRACTION)  # fmt: skip
    _train_panel(axes[6], runs, "gradient norm (before clipping)", [("grad_norm", "norm")],
                 log=True, hline=(clip, "clip") if clip > 0 else None)  # fmt: skip
    _train_panel(axes[7], runs, "learning rate", [("lr", "lr")], smooth=False)
    _train_panel(axes[8], runs, "throughput (it/s)", [("it_s", "it/s")])
    _probe_panel(axes[9], runs, "frac_differ", "probe: pairs whose predictions differ",
                 "min_differ", ylim=FRACTION)  # fmt: skip
    _probe_panel(axes[10], runs, "mean_tv", "probe: mean TV distance", "min_tv", log=True)
    _eval_panel(axes[11], runs)
    for ax in axes[:11]:
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(which="both", labelsize=8)
        ax.grid(alpha=0.25)
    fig.suptitle(_title(runs), fontsize=10)
    if notes:
        shown = notes[:MAX_NOTES] + (
            [f"... {len(notes) - MAX_NOTES} more"] if len(notes) > MAX_NOTES else []
        )
        text = "\n".join(textwrap.shorten(n, 220, placeholder=" ...") for n in shown)
        fig.supxlabel("notes:\n" + text, fontsize=8, color="#8a4b00")
    return fig


# --------------------------------------------------------------------------- output


def _html(runs: list[RunData], png: Path) -> str:
    def img(path: Path, alt: str) -> str:
        b64 = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>hrm-fast report</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1600px}"
        "img{max-width:100%}td,th{padding:2px 10px;text-align:right}</style></head><body>",
        "<h1>hrm-fast report</h1>",
        img(png, "training dashboard"),
    ]
    for run in runs:
        parts.append(f"<h2>{html.escape(run.name)}</h2><p>{html.escape(config_summary(run))}</p>")
        if run.notes:
            items = "".join(f"<li>{html.escape(n)}</li>" for n in run.notes)
            parts.append(f"<p>Notes:</p><ul>{items}</ul>")
        if run.eval is not None:
            o = run.eval["overall"]
            scores = _eval_scores([run])
            heads = (html.escape(lab.replace("\n", " ")) for _, lab in scores)
            head = "".join(f"<th>{h}</th>" for h in heads)
            row = "".join(f"<td>{_number(o.get(k)):.3f}</td>" for k, _ in scores)
            parts.append(
                f"<p>Held-out eval at step {html.escape(str(run.eval.get('step')))}:</p>"
                f"<table><tr>{head}</tr><tr>{row}</tr></table>"
            )
        if run.eval_png is not None:
            parts.append("<p>eval.png (input | target | prediction):</p>")
            parts.append(img(run.eval_png, "eval predictions: input | target | prediction"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(runs: list[str | Path], out: str | Path | None = None, as_html=False) -> Path:
    """Draw the dashboard for ``runs``; returns the PNG's path (the HTML goes next to it)."""
    data = [load_run(r) for r in runs]
    out = Path(out) if out else data[0].path / "report.png"
    if out.suffix.lower() != ".png":
        raise UserError(f"--out: {out}: the dashboard is a PNG; give a path ending in .png")
    if out.is_dir():
        raise UserError(f"--out: {out}: is a directory, expected a .png file name")
    try:  # before the drawing: a place that takes no file is bad input (exit 2)
        prepare_dir(out.parent, "")
    except UserError as e:
        raise UserError(f"--out: {out}: {str(e).split(': ', 1)[-1]}") from None
    fig = build_figure(data)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    # Atomic: a full disk leaves the previous report intact (exit 4, work had begun).
    write_output(out, buf.getvalue(), WriteFailed)
    if as_html:
        write_output(out.with_suffix(".html"), _html(data, out), WriteFailed)
    return out


def main(args) -> int:
    png = write_report(args.runs, args.out, as_html=args.html)
    print(f"wrote {png}" + (f" and {png.with_suffix('.html')}" if args.html else ""))
    return 0
