"""``hrm-fast bench`` compares its table with the last run of the same bench on this host: a
row much slower, or an own-process peak much bigger, is named with both values."""

from __future__ import annotations

import json

import pytest

from hrm_fast import benchmark

OWN = "ru_maxrss (peak RSS of the preset's own process)"
SHARED = "ru_maxrss (CPU process peak RSS, cumulative)"


def _row(name, mean_s, mem=None, label=OWN):
    return {"benchmark": name, "mean_s": mean_s, "peak_mem_bytes": mem, "peak_mem_label": label}


def test_slower_and_bigger_rows_are_named():
    before = [_row("smoke", 0.20, 600 * 2**20), _row("maze", 1.6, 1000 * 2**20),
              _row("attn", 0.01, 900 * 2**20, SHARED), _row("gone", 1.0)]  # fmt: skip
    now = [_row("smoke", 0.30, 600 * 2**20), _row("maze", 1.7, 1200 * 2**20),
           _row("attn", 0.0101, 2000 * 2**20, SHARED), _row("new", 9.0)]  # fmt: skip
    found = benchmark.regressions(now, before)
    assert found == [
        "smoke: 1.50x slower (200.00 ms -> 300.00 ms)",  # over the 1.25x time bar
        "maze: peak memory 1.20x (1000 MiB -> 1200 MiB)",  # 1.06x time: under the bar
    ]  # a cumulative peak is not compared; rows on one side only are skipped
    assert benchmark.regressions(now[:1], now[:1]) == []
    # Sub-millisecond rows are too noisy to flag on time.
    assert benchmark.regressions([_row("tiny", 4e-4)], [_row("tiny", 1e-4)]) == []


def test_baseline_is_the_newest_readable_run_of_this_host_device_and_mode(tmp_path, monkeypatch):
    bench = tmp_path / "bench"
    (bench / "results").mkdir(parents=True)
    (bench / "conftest.py").write_text("")
    monkeypatch.setattr(benchmark, "BENCH_DIR", bench)
    host = benchmark.host_id()

    def save(stamp, device, quick, table, host=host):
        data = {"hrm_fast": {"device": device, "quick": quick, "table": table}}
        path = bench / "results" / f"{stamp}-{device}-{host}.json"
        path.write_text(json.dumps(data))
        return path

    assert benchmark.previous_results("cpu", False) is None
    old = save("20261201-100000", "cpu", False, [_row("smoke", 0.2)])
    save("20261201-110000", "cpu", True, [_row("smoke", 0.1)])  # --quick: another mode
    save("20261201-120000", "cpu", False, [_row("smoke", 0.1)], host="otherhost")
    (bench / "results" / f"20261201-130000-cpu-{host}.json").write_text('{"hrm_fast": ')  # torn
    path, table = benchmark.previous_results("cpu", False)
    assert path == old and table[0]["mean_s"] == pytest.approx(0.2)
    assert benchmark.previous_results("cuda", False) is None
    text = benchmark.format_regressions(["smoke: 2.00x slower (a -> b)"], path)
    assert text.splitlines() == [f"against {old.name}, slower than 1.25x or bigger than 1.1x:",
                                 "  smoke: 2.00x slower (a -> b)"]  # fmt: skip
