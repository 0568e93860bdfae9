"""report: report.png is written atomically (a full disk keeps the previous one, exit 4), and
damaged metrics lines (a step of 1e20, losses of +-1e308) are skipped, not a traceback."""

import errno
import json
import os

from hrm_fast.cli import main as cli_main
from hrm_fast.errors import EXIT_WRITE_FAILED
from hrm_fast.presets import from_name


def _run_dir(tmp_path, extra_lines=()):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(from_name("debug").to_json())
    recs = [{"event": "train", "step": s, "loss": 2.0 / s, "lm_loss": 1.5 / s} for s in range(1, 9)]
    recs += list(extra_lines)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return run


def test_full_disk_keeps_the_previous_report(tmp_path, capsys, monkeypatch):
    run = _run_dir(tmp_path)
    assert cli_main(["report", str(run)]) == 0
    before = (run / "report.png").read_bytes()
    capsys.readouterr()

    def full(fd):  # the data reaches the disk at fsync: where a full disk shows
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert cli_main(["report", str(run)]) == EXIT_WRITE_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ENOSPC" in err[0] and "report.png" in err[0], err
    assert (run / "report.png").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl", "report.png"]


def test_absurd_metrics_values_are_skipped(tmp_path, capsys):
    bad = [{"event": "train", "step": 1e20, "loss": 1.0},
           {"event": "train", "step": 9, "loss": 1e308, "lm_loss": -1e308},
           {"event": "train", "step": -3, "loss": 1.0}]  # fmt: skip
    run = _run_dir(tmp_path, bad)
    assert cli_main(["report", str(run)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Warning" not in captured.err, captured.err
    assert (run / "report.png").stat().st_size > 10_000
