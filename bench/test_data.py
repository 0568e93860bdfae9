"""Data: batched on-device augmentation (``DeviceSampler.sample`` / ``augment_batch``) vs HRM's
per-example numpy pipeline (``augment_example_np``), in examples/s."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrm_fast.data import ArcDataset, DeviceSampler
from hrm_fast.grid_transforms import augment_batch_ref, augment_example_np
from hrm_fast.presets import from_name


@pytest.fixture(scope="session")
def dataset(quick):
    cfg = from_name("seed").data
    if quick:
        cfg.max_tasks, cfg.n_aug = 8, 4
    return ArcDataset.build(cfg, seed=0)


def _rounds(device: str, quick: bool) -> tuple[int, int]:
    if quick:
        return 2, 1
    return (100, 10) if device == "cuda" else (10, 2)


@pytest.mark.parametrize("impl", ["sampler_ref", "sampler_fused", "augment_ref", "augment_fused"])
def test_batched_augment(record, benchmark, device, quick, dataset, impl, data_batch):
    batch = data_batch
    if impl.endswith("fused") and device != "cuda":
        pytest.skip("fused augment = Triton kernel, CUDA only (CPU falls back to the reference)")
    benchmark.group = f"data:batch{batch}"
    torch.manual_seed(0)
    backend = "fused" if impl.endswith("fused") else "reference"
    sampler = DeviceSampler(dataset, device, backend)
    if impl.startswith("sampler"):  # draw + augment, what the training step runs

        def call():
            sampler.sample(batch)

    else:  # the augment op alone, on fixed draws
        d = sampler.draw(batch)

        def call():
            sampler.augment(d)

    rounds, warmup = _rounds(device, quick)
    record(call, rounds, warmup, kind="data", impl=impl, unit="examples/s",
           items_per_call=batch, batch_size=batch)  # fmt: skip


def test_numpy_per_example(record, benchmark, device, quick, dataset, data_batch):
    """HRM's dataset builder: one example at a time in numpy on the host (device-independent)."""
    batch = data_batch
    benchmark.group = f"data:batch{batch}"
    sampler = DeviceSampler(dataset, "cpu", "reference")
    torch.manual_seed(0)
    d = {k: v.numpy() for k, v in sampler.draw(batch).items()}
    pairs = [dataset.bank.pair(int(p)) for p in d["pair"]]  # host grids, as a builder holds
    canvas = dataset.cfg.canvas

    def call():
        xs, ys = [], []
        for i in range(batch):
            x, y = augment_example_np(
                pairs[i][0], pairs[i][1], int(d["dihedral"][i]), d["colour_map"][i],
                (int(d["offset"][i, 0]), int(d["offset"][i, 1])), canvas,
            )  # fmt: skip
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.stack(ys)

    # Same examples as the batched reference: the numbers compare like for like.
    x, y = call()
    b = sampler.bank
    rx, ry = augment_batch_ref(b.inputs, b.outputs, b.shapes, *(torch.as_tensor(d[k]) for k in
                               ("pair", "dihedral", "colour_map", "offset")), canvas)  # fmt: skip
    assert np.array_equal(x, rx.numpy()) and np.array_equal(y, ry.numpy())
    rounds, warmup = _rounds("cpu", quick)
    record(call, rounds, warmup, kind="data", impl="numpy_per_example", unit="examples/s",
           items_per_call=batch, batch_size=batch, host_only=True)  # fmt: skip
