"""CPU rows: training it/s of ``Trainer.step()`` for every CPU-sized preset, each built as
``hrm-fast train --preset P`` builds it, in a process of its own (``hrm_fast.bench_worker``) so
that its peak RSS (ru_maxrss, build included) is its own and a memory regression shows.
``--quick`` keeps one preset. The time of a round is the parent's request of one step: the
step plus a pipe's round trip, a fraction of a millisecond."""

from __future__ import annotations

import pytest

from hrm_fast.bench_worker import Worker
from hrm_fast.presets import CPU_PRESETS

# The CPU presets a user trains; debug and board-debug are unit-test shapes.
ROWS = tuple(p for p in CPU_PRESETS if p not in ("debug", "board-debug"))
QUICK_ROWS = ("smoke",)


@pytest.mark.parametrize("preset", ROWS)
def test_cpu_preset_step(benchmark, device, quick, tmp_path, preset):
    if device != "cpu":
        pytest.skip("the CPU presets' rows are CPU rows")
    if quick and preset not in QUICK_ROWS:
        pytest.skip(f"--quick benches the {', '.join(QUICK_ROWS)} preset only")
    from bench.env import environment

    spec = dict(side="ours", preset=preset, batch_size=0, dtype="auto", device="cpu", threads=0)
    worker = Worker(preset, spec, tmp_path / "worker.log")
    try:
        info = worker.ready()
        benchmark.group = "train:cpu-presets"
        rounds, warmup = (1, 1) if quick else (5, 2)
        benchmark.pedantic(worker.step, rounds=rounds, warmup_rounds=warmup, iterations=1)
        end = worker.finish()
    finally:
        worker.close()
    benchmark.extra_info.update(
        kind="train", variant="default", preset=preset, batch_size=info["batch_size"],
        backend=info["backend"], dtype=info["dtype"][6:], compile=info["compile"],
        threads=info["threads"], unit="it/s", items_per_call=1, device="cpu",
        peak_mem_bytes=end["peak_mem_bytes"],
        peak_mem_label="ru_maxrss (the preset's own process, its build included)",
        rounds=rounds, warmup_rounds=warmup, env=environment("cpu"),
    )  # fmt: skip
    assert end["loss_finite"], f"{preset}: loss is not finite"
