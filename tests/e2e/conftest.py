"""Fixtures shared by the end-to-end tests."""

import pytest

from tests.support.tasks import write_nonsquare_tasks


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A debug-preset run trained for two steps on small non-square tasks: (root, run dir)."""
    from hrm_fast.presets import from_name
    from hrm_fast.trainer.loop import train

    root = tmp_path_factory.mktemp("eval_e2e")
    cfg = from_name("debug")
    cfg.data.source = str(write_nonsquare_tasks(root / "tasks", 3, seed=5))
    cfg.data.canvas = 8
    cfg.train.steps = 2
    # fp32 on every CPU, so eval (in the run's dtype) predicts the same grids everywhere: the
    # attempt checks need a model whose top votes are not empty grids.
    cfg.train.dtype = "fp32"
    # This test is about evaluation: an untrained model must not be stopped by the probe.
    cfg.train.probe_min_differ = 0.0
    cfg.train.probe_min_tv = 0.0
    run = root / "run"
    assert train(cfg, run, quiet=True) == 0
    return root, run
