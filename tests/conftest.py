"""Shared test setup.

No machine here has a GPU, so Triton kernels run under the interpreter. The variable must be
set before triton is first imported; set TRITON_INTERPRET=0 yourself to run the same parity
tests on a real GPU. Fixtures live here; helpers that tests import live in tests/support/.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import pytest  # noqa: E402

from tests.support.tasks import write_tiny_tasks  # noqa: E402


@pytest.fixture
def tiny_tasks(tmp_path):
    return write_tiny_tasks(tmp_path / "tasks")


@pytest.fixture
def debug_cfg(tiny_tasks):
    from hrm_fast.presets import from_name

    cfg = from_name("debug")
    cfg.data.source = str(tiny_tasks)
    cfg.data.canvas = 8
    return cfg


@pytest.fixture
def inductor_eager_random():
    """Inductor draws random numbers with eager's generator, so a compiled step sees the same
    batches and exploration draws as the eager one. ``config.patch``, not monkeypatch: undoing a
    monkeypatch on inductor's config module deletes the option for every later test."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        yield
