"""`hrm-fast report` (the PNG dashboard) and the run trackers (TensorBoard, W&B offline)."""

import json
import math
import struct
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest

from hrm_fast import checkpoint as ckpt
from hrm_fast.cli import main as cli_main
from hrm_fast.dashboard import build_figure, load_run, write_report
from hrm_fast.errors import UserError
from hrm_fast.presets import from_name
from hrm_fast.trainer.loop import train

PANELS = 12  # 11 curves + the eval panel


def _train_rec(step, rng, **extra):
    loss = 3.0 * math.exp(-step / 200) + 0.1 * rng.standard_normal()
    parts = dict(lm_loss=loss * 0.9, q_halt_loss=0.01, q_continue_loss=0.04, diversity=0.1,
                 distribution=0.2, halt=0.05)  # fmt: skip
    rec = dict(event="train", step=step, loss=loss, **parts, accuracy=min(1, step / 400),
               exact_accuracy=0.0, unique_classes=8 + rng.random(), q_halt_accuracy=0.9,
               grad_norm=1 + rng.random(), act_steps=2 + rng.random(), lr=1e-3,
               it_s=5 + rng.random())  # fmt: skip
    return {**rec, **extra}


def _probe_rec(step, frac, tv, passed):
    return dict(event="probe", step=step, pairs=8, frac_differ=frac, mean_tv=tv, min_differ=0.25,
                min_tv=0.01, passed=passed)  # fmt: skip


@pytest.fixture
def synthetic_run(tmp_path):
    """200 steps logged every 10, a resume from step 100 after a kill at 150 (steps 110-150
    logged twice), a key from a newer version, a failed probe, and a cut-off last line."""
    run = tmp_path / "synthetic"
    run.mkdir()
    cfg = from_name("smoke")
    cfg.train.steps = 200
    (run / "config.json").write_text(cfg.to_json())
    rng = np.random.default_rng(0)
    lines = [_probe_rec(0, 0.9, 0.2, True)]
    lines += [_train_rec(s, rng) for s in range(10, 160, 10)]
    lines += [_probe_rec(100, 0.6, 0.05, True)]
    lines += [_train_rec(s, rng, grad_norm=7.0, new_metric=1.0) for s in range(110, 210, 10)]
    lines += [_probe_rec(150, 0.1, 0.004, False), _probe_rec(200, 0.5, 0.03, True)]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    (run / "metrics.jsonl").write_text(text + '{"event": "train", "step": 210, "lo')
    return run


def _has_data(ax) -> bool:
    ys = [np.asarray(line.get_ydata(), float) for line in ax.get_lines()]
    bars = [p.get_height() for p in ax.patches]
    return any(np.isfinite(y).any() for y in ys) or any(h > 0 for h in bars)


def _check_png(png, fig, max_bytes=400_000):
    """The PNG has the figure's size and every panel with data shows coloured ink (data, not
    only the black frame, grey grid and text): read back, region by region."""
    assert 20_000 < png.stat().st_size < max_bytes
    img = mpimg.imread(png)[..., :3]
    fig.canvas.draw()  # lays the panels out as savefig did
    w, h = fig.canvas.get_width_height()
    assert img.shape[:2] == (h, w)
    chroma = img.max(-1) - img.min(-1)
    for ax in [ax for ax in fig.axes if _has_data(ax)]:
        x0, y0, x1, y1 = ax.get_window_extent().extents
        region = chroma[int(h - y1) : int(h - y0), int(x0) : int(x1)]
        assert region.size and (region > 0.3).mean() > 1e-3, f"blank panel {ax.get_title()!r}"


def test_synthetic_run_reads_and_draws(synthetic_run):
    run = load_run(synthetic_run)
    assert list(run.steps) == list(range(10, 210, 10))  # one continuous curve
    assert run.train["grad_norm"][run.steps.tolist().index(120)] == 7.0  # the later record won
    assert run.train["grad_norm"][run.steps.tolist().index(100)] != 7.0
    notes = " ".join(run.notes)
    assert "resumed: 5 step(s) logged twice" in notes
    assert "new_metric" in notes and "cut off" in notes
    assert [p["step"] for p in run.probes] == [0, 100, 150, 200]

    fig = build_figure([run])
    assert len(fig.axes) == PANELS
    for ax in fig.axes[:11]:
        assert _has_data(ax), f"empty panel {ax.get_title()!r}"
    differ = next(ax for ax in fig.axes if "differ" in ax.get_title())
    failed = [line for line in differ.get_lines() if line.get_marker() == "X"]
    assert len(failed) == 1 and list(failed[0].get_xdata()) == [150]
    thresholds = [
        line.get_ydata()[0] for line in differ.get_lines() if line.get_linestyle() == "--"
    ]
    assert thresholds == [0.25]
    assert "step 200 of 200" in fig.get_suptitle() and "hidden 64" in fig.get_suptitle()

    png = write_report([synthetic_run])
    assert png == synthetic_run / "report.png"
    _check_png(png, fig)


def test_several_runs_and_a_run_still_starting(synthetic_run, tmp_path, capsys):
    starting = tmp_path / "starting"
    starting.mkdir()
    (starting / "metrics.jsonl").write_text(json.dumps(_probe_rec(0, 0.9, 0.2, True)) + "\n")
    out = tmp_path / "cmp" / "both.png"
    assert cli_main(["report", str(synthetic_run), str(starting), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    fig = build_figure([load_run(synthetic_run), load_run(starting)])
    title = fig.get_suptitle()
    assert str(synthetic_run) in title and str(starting) in title
    probe = next(ax for ax in fig.axes if "TV" in ax.get_title())
    assert len({line.get_color() for line in probe.get_lines() if line.get_marker() == "o"}) == 2
    _check_png(out, fig)


def test_a_glued_line_keeps_its_complete_record_and_runs_get_distinct_labels(tmp_path):
    from hrm_fast.dashboard import _label_runs, _parse_line

    rec = _probe_rec(50, 0.5, 0.1, True)
    assert _parse_line('{"event": "train", "st' + json.dumps(rec)) == rec
    assert _parse_line('{"event": "train", "st') is None and _parse_line("[1, 2]") is None
    runs = []
    for parent in ("a", "b"):
        (tmp_path / parent / "run").mkdir(parents=True)
        (tmp_path / parent / "run" / "metrics.jsonl").write_text(json.dumps(rec) + "\n")
        runs.append(load_run(tmp_path / parent / "run"))
    _label_runs(runs)
    assert [r.label for r in runs] == ["a/run", "b/run"]


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda d: d / "nope", "no such directory"),
        (lambda d: _write(d / "file.txt", "x"), "not a run directory"),
        (lambda d: d, "metrics.jsonl: no such file"),
        (lambda d: _write(d / "metrics.jsonl", "").parent, "no metrics records yet"),
        (lambda d: _write(d / "metrics.jsonl", "oops\n[1]\n").parent, "no readable records"),
    ],
    ids=["missing", "file", "no-metrics", "empty", "garbage"],
)
def test_bad_input_is_one_line(tmp_path, capsys, make, needle):
    run = make(tmp_path)
    assert cli_main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hrm-fast: {run}") and needle in err[0], err


def test_bad_out_is_one_line_from_the_shell(synthetic_run, tmp_path):
    (tmp_path / "f").write_text("")
    for out, needle in ((tmp_path / "x.jpg", "ending in .png"), (tmp_path / "f" / "r.png", "")):
        r = subprocess.run([sys.executable, "-m", "hrm_fast.cli", "report", str(synthetic_run),
                            "--out", str(out)], capture_output=True, text=True)  # fmt: skip
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert lines[0].startswith(f"hrm-fast: --out: {out}") and needle in lines[0]


# --------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The debug preset with TensorBoard on: 4 steps; then a kill is simulated (the step-4
    checkpoint lost, a half-written line), and the run resumes from step 2 to step 6."""
    from tests.support.tasks import write_tiny_tasks

    root = tmp_path_factory.mktemp("real")
    cfg = from_name("debug")
    cfg.data.source = str(write_tiny_tasks(root / "tasks"))
    cfg.train.checkpoint_every = 2
    cfg.train.tensorboard = True
    plain = root / "plain"
    cfg.train.steps = 6
    cfg.train.tensorboard = False
    assert train(cfg, plain, quiet=True) == 0
    cfg.train.tensorboard = True
    run = root / "run"
    cfg.train.steps = 4
    assert train(cfg, run, quiet=True) == 0
    ckpt.checkpoint_path(run, 4).unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "step": 5, "loss": 2.')
    cfg.train.steps = 6
    assert train(cfg, run, resume=True, quiet=True) == 0
    return run, plain


def _losses(run):
    return {s: loss for s, loss in zip(run.steps, run.train["loss"], strict=True)}


def test_report_of_a_real_resumed_run(real_run):
    run_dir, plain_dir = real_run
    run, plain = load_run(run_dir), load_run(plain_dir)
    assert list(run.steps) == [1, 2, 3, 4, 5, 6]
    # The resumed run (and the tracker's prediction draws) give the straight run's losses.
    assert _losses(run) == _losses(plain)
    assert np.isfinite(run.train["it_s"]).all() and (run.train["it_s"] > 0).all()
    # The resumed run ended the half-written line before appending its own records.
    assert '{"event": "train", "step": 5, "loss": 2.' in (
        run_dir / "metrics.jsonl"
    ).read_text().split("\n")
    notes = " ".join(run.notes)
    assert "resumed: 2 step(s)" in notes and "skipped 1 unreadable line (8)" in notes
    assert "ignored keys" not in notes  # the report knows every key the trainer writes
    fig = build_figure([run])
    for ax in fig.axes[:11]:
        if "ACT" in ax.get_title() and not np.isfinite(run.train["act_steps"]).any():
            continue  # NaN while no example has halted in a log interval
        assert _has_data(ax), f"empty panel {ax.get_title()!r}"
    png = write_report([run_dir])
    _check_png(png, fig)


def test_report_after_eval_adds_scores_and_eval_png(real_run, tmp_path, capsys):
    run_dir, _ = real_run
    assert (
        cli_main(["eval", str(run_dir), "--n-aug", "1", "--max-tasks", "1", "--render", "1"]) == 0
    )
    out = tmp_path / "r.png"
    assert cli_main(["report", str(run_dir), "--out", str(out), "--html"]) == 0
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "pass@1" in page
    run = load_run(run_dir)
    assert run.eval["step"] == 6 and run.eval_png == run_dir / "eval.png"
    fig = build_figure([run])
    eval_ax = fig.axes[11]
    assert eval_ax.get_xticklabels()[0].get_text() == "pass@1"
    pixel = run.eval["overall"]["pixel_accuracy"]
    assert [b.get_height() for b in eval_ax.patches][3] == pytest.approx(pixel)
    stars = [ln for ln in fig.axes[2].get_lines() if ln.get_marker() == "*"]
    assert len(stars) == 1 and list(stars[0].get_xdata()) == [6]


def test_tensorboard_events_hold_tags_and_steps(real_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = real_run
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for key in ("loss", "lm_loss", "accuracy", "act_steps", "grad_norm", "lr", "it_s"):
        assert f"train/{key}" in tags["scalars"], key
    # Events the killed run wrote past its last checkpoint (steps 3, 4) were purged on resume.
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    run = load_run(run_dir)
    tb_loss = [e.value for e in acc.Scalars("train/loss")]
    assert np.allclose(tb_loss, run.train["loss"], rtol=1e-6)
    for key in ("frac_differ", "mean_tv", "passed", "input_gain"):
        assert [e.step for e in acc.Scalars(f"probe/{key}")] == [0, 2, 4, 6]
    images = acc.Images("predictions")
    assert [e.step for e in images] == [0, 2, 4, 6]
    assert images[0].width > 50 and images[0].height > 50


# --------------------------------------------------------------------------- trackers


def test_missing_tracker_package_is_one_line(monkeypatch, tmp_path):
    from hrm_fast.trackers import open_trackers

    cfg = from_name("debug")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg.train.tensorboard = True
    with pytest.raises(UserError, match=r"pip install hrm-fast\[tensorboard\]"):
        open_trackers(cfg, tmp_path)
    cfg.train.tensorboard, cfg.train.wandb = False, "proj"
    with pytest.raises(UserError, match=r"^--wandb: .*pip install hrm-fast\[wandb\]"):
        open_trackers(cfg, tmp_path)


def test_wandb_mode_is_offline_without_key_or_network(monkeypatch, tmp_path):
    from hrm_fast.trackers import wandb_mode

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("NETRC", raising=False)
    assert wandb_mode({"WANDB_MODE": "online"}) is None  # the user's choice stands
    assert wandb_mode({}, reachable=lambda h: True) == "offline"  # no API key
    key = {"WANDB_API_KEY": "k"}
    assert wandb_mode(key, reachable=lambda h: False) == "offline"
    assert wandb_mode(key, reachable=lambda h: True) == "online"


def _wandb_records(path):
    """Records of a W&B ``.wandb`` file: a 7-byte header, then LevelDB-log framing (32 KiB
    blocks; 7-byte record headers: crc32, little-endian length, type FULL/FIRST/MIDDLE/LAST)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if length == 0 and kind == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            out.append(buf)
            buf = b""
    return out


def test_wandb_offline_logs_scalars_and_images(monkeypatch, tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install hrm-fast[wandb])")
    from wandb.proto import wandb_internal_pb2

    # A fresh interpreter: wandb's process-wide state is not shared with other tests.
    script = f"""
import numpy as np
from hrm_fast.trackers import Trackers, WandbTracker
from pathlib import Path
tracker = WandbTracker("hrm-fast-test", Path({str(tmp_path)!r}), {{"train": {{"lr": 1e-3}}}})
trackers = Trackers([tracker])
for step, loss in ((1, 3.0), (2, 2.5), (2, 2.4), (3, 2.0)):  # step 2 again: a resume
    trackers.record({{"event": "train", "step": step, "loss": loss, "lr": 1e-3}})
trackers.record({_probe_rec(3, 0.5, 0.03, True)!r})
tracker.image(3, "predictions", np.zeros((8, 8, 3), np.uint8))
trackers.close()
"""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]

    (wfile,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    rows = []
    for raw in _wandb_records(wfile):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                         for i in rec.history.item})  # fmt: skip
    losses = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    assert losses == [(1, 3.0), (2, 2.5), (2, 2.4), (3, 2.0)]
    assert [(r["step"], r["probe/passed"]) for r in rows if "probe/passed" in r] == [(3, 1.0)]
    images = [r for r in rows if r.get("predictions/_type") == "image-file"]
    assert len(images) == 1 and images[0]["step"] == 3 and images[0]["predictions/width"] == 8
    assert (tmp_path / "wandb-run-id").read_text().strip() in wfile.name
