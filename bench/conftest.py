"""Bench suite (pytest-benchmark): ``pytest bench/ [--device cpu|cuda] [--quick]``.

Not part of the test suite (``testpaths = tests``); ``pytest tests bench`` runs both. Every
result's ``extra_info`` carries what ``hrm-fast bench`` needs for its table (``kind``, ``unit``,
``items_per_call``, peak memory) and the environment before and after the benchmark
(``bench/env.py``).
"""

from __future__ import annotations

import resource

import pytest

from bench.env import environment


def pytest_addoption(parser):
    g = parser.getgroup("hrm-fast bench")
    g.addoption("--device", default="cpu", choices=["cpu", "cuda"], help="where to bench")
    g.addoption("--quick", action="store_true", help="tiny shapes and few steps (smoke pass)")


def pytest_generate_tests(metafunc):
    # Data-bench batch sizes: the seed batch and the paper's; one tiny batch under --quick.
    if "data_batch" in metafunc.fixturenames:
        quick = metafunc.config.getoption("--quick")
        metafunc.parametrize("data_batch", [8] if quick else [20, 768])


@pytest.fixture(scope="session")
def device(request) -> str:
    dev = request.config.getoption("--device")
    if dev == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.exit("--device cuda: no CUDA GPU is available on this machine", returncode=2)
    return dev


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return bool(request.config.getoption("--quick"))


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> dict:
    if device == "cuda":
        import torch

        return {
            "peak_mem_bytes": int(torch.cuda.max_memory_allocated()),
            "peak_mem_label": "torch.cuda.max_memory_allocated",
        }
    # Linux reports KiB. Process-wide high-water mark: includes everything run before.
    return {
        "peak_mem_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "peak_mem_label": "ru_maxrss (CPU process peak RSS, cumulative)",
    }


@pytest.fixture
def record(benchmark, device):
    """``record(fn, rounds, warmup, kind=..., unit=..., items_per_call=..., **info)``.

    Runs ``fn`` under ``benchmark.pedantic`` (one call per round, synchronised on CUDA) and
    fills ``extra_info`` with the environment before/after, the peak memory and ``info``.
    """

    def run(fn, rounds: int, warmup: int, **info):
        before = environment(device)
        reset_peak(device)

        def timed():
            fn()
            sync(device)

        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup, iterations=1)
        after = environment(device)
        benchmark.extra_info.update(info)
        benchmark.extra_info.update(peak_memory(device))
        benchmark.extra_info.update(
            device=device, rounds=rounds, warmup_rounds=warmup, env=before,
            gpu_after=after["gpu"],
        )  # fmt: skip

    return run
