"""End to end: training it/s of ``Trainer.step()`` at the ``seed`` preset (batch 20) and TRM's
``trm-arc1`` (batch 20 too) for the reference, compiled, fused and fused + CUDA-graph variants.
``--quick`` uses the ``smoke`` and ``trm-smoke`` presets. Peak memory:
``torch.cuda.max_memory_allocated`` on CUDA, process ru_maxrss on CPU."""

from __future__ import annotations

import pytest

from hrm_fast.presets import from_name
from hrm_fast.trainer.step import Trainer

VARIANTS = {
    # name: (backend, compile, cuda_graphs)
    "reference": ("reference", "false", False),
    "compiled": ("reference", "true", False),
    "fused": ("fused", "false", False),
    "fused_graphs": ("fused", "false", True),
    "fused_compiled_graphs": ("fused", "true", True),
}

CPU_SKIP = {
    "compiled": "torch.compile is benched on CUDA only: on 2 CPU cores inductor's compile of the "
    "step takes minutes and CPU numbers say nothing about the GPU target",
    "fused": "fused = Triton kernels, CUDA only (on CPU the fused ops fall back to the reference)",
    "fused_graphs": "CUDA graphs need a CUDA device",
    "fused_compiled_graphs": "CUDA graphs need a CUDA device",
}


def _steps(device: str, quick: bool) -> tuple[int, int]:
    """(measured, warm-up) steps. Warm-up covers compile and CUDA-graph capture."""
    if device == "cuda":
        return (5, 3) if quick else (50, 10)
    # CPU: a seed-preset step takes 1-2 minutes on this 2-core machine; keep the bench short.
    return (2, 1) if quick else (2, 1)


# (arch, quick) -> preset
PRESET = {("hrm", True): "smoke", ("hrm", False): "seed",
          ("trm", True): "trm-smoke", ("trm", False): "trm-arc1"}  # fmt: skip


@pytest.mark.parametrize("arch", ["hrm", "trm"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_train_step(record, benchmark, device, quick, tmp_path, variant, arch):
    if device != "cuda" and variant in CPU_SKIP:
        pytest.skip(CPU_SKIP[variant])
    if device != "cuda" and arch == "trm" and not quick:
        pytest.skip("a trm-arc1 step (15 applications at hidden 512, S=916) takes minutes on CPU")
    preset = PRESET[(arch, quick)]
    cfg = from_name(preset)
    backend, compile_, graphs = VARIANTS[variant]
    t = cfg.train
    t.device, t.backend, t.compile, t.cuda_graphs = device, backend, compile_, graphs
    if not quick:
        t.batch_size = 20  # the user's seed run; TRM at the same batch for comparison
    benchmark.group = f"train:{preset}"
    trainer = Trainer(cfg)
    measured, warmup = _steps(device, quick)
    record(
        trainer.step, measured, warmup, kind="train", variant=variant, preset=preset,
        batch_size=t.batch_size, backend=trainer.backend, dtype=str(trainer.dtype)[6:],
        compile=compile_, cuda_graphs=graphs, unit="it/s", items_per_call=1,
    )  # fmt: skip
    m = trainer.read_metrics()  # one host read after timing; a NaN loss voids the number
    assert m["loss"] == m["loss"], f"{variant}: loss is NaN"
