"""Triton augment / invert launchers vs the torch references: bit-identical."""

import numpy as np
import pytest
import torch
from hrm_fast.kernels.augment import (
    _augment_fwd,
    _invert_fwd,
    aot_specs,
    augment_batch,
    invert_batch,
)

from hrm_fast.compile_report import preset_shape
from hrm_fast.grid_transforms import (
    augment_batch_ref,
    invert_batch_ref,
    random_offsets,
    sample_pool,
)
from tests.support.parity import kernel_device

pytestmark = pytest.mark.interpret


def _bank(rng, n_pairs, canvas, dev):
    bi = torch.zeros(n_pairs, canvas, canvas, dtype=torch.uint8)
    bo = torch.zeros_like(bi)
    shapes = torch.from_numpy(rng.integers(1, canvas + 1, (n_pairs, 4)).astype(np.int32))
    for p, (h, w, ho, wo) in enumerate(shapes.tolist()):
        bi[p, :h, :w] = torch.from_numpy(rng.integers(0, 10, (h, w)))
        bo[p, :ho, :wo] = torch.from_numpy(rng.integers(0, 10, (ho, wo)))
    return bi.to(dev), bo.to(dev), shapes.to(dev)


def _batch(rng, shapes, batch, canvas, translate, dev):
    pair = torch.from_numpy(rng.integers(0, shapes.shape[0], batch)).to(dev)
    dihedral = torch.from_numpy(rng.integers(0, 8, batch)).to(dev)
    dihedral[: min(8, batch)] = torch.arange(min(8, batch))  # every element at least once
    _, cm = sample_pool(1, batch, seed=int(rng.integers(1 << 30)))
    cmap = torch.from_numpy(cm[0]).to(dev)
    offset = random_offsets(shapes[pair], dihedral, canvas, translate)
    return pair, dihedral, cmap, offset


@pytest.mark.parametrize("canvas,batch", [(30, 5), (30, 11), (7, 9), (7, 1)])
@pytest.mark.parametrize("translate", [True, False])
def test_augment_kernel_matches_ref(canvas, batch, translate):
    dev = kernel_device()
    rng = np.random.default_rng(canvas * 1000 + batch)
    torch.manual_seed(batch)
    bi, bo, shapes = _bank(rng, 7, canvas, dev)
    pair, dihedral, cmap, offset = _batch(rng, shapes, batch, canvas, translate, dev)
    want = augment_batch_ref(bi, bo, shapes, pair, dihedral, cmap, offset, canvas)
    out = tuple(torch.full((batch, canvas * canvas), -7, dtype=torch.int32, device=dev)
                for _ in range(2))  # fmt: skip
    got = _augment_fwd(bi, bo, shapes, pair, dihedral, cmap, offset, canvas, out=out)
    assert got[0] is out[0] and got[1] is out[1]
    for name, g, w in zip(("inputs", "labels"), got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        bad = (g != w).nonzero()
        assert len(bad) == 0, f"{name}: {len(bad)} cells differ, first at {bad[:5].tolist()}"


@pytest.mark.parametrize("canvas,batch", [(30, 9), (7, 13)])
def test_invert_kernel_matches_ref(canvas, batch):
    dev = kernel_device()
    rng = np.random.default_rng(batch)
    bi, bo, shapes = _bank(rng, 6, canvas, dev)
    pair, dihedral, cmap, _ = _batch(rng, shapes, batch, canvas, False, dev)
    zero = torch.zeros(batch, 2, dtype=torch.long, device=dev)
    _, labels = augment_batch_ref(bi, bo, shapes, pair, dihedral, cmap, zero, canvas)
    # Also ill-formed predictions: random tokens (PAD / EOS / colours) everywhere.
    noise = torch.from_numpy(rng.integers(0, 12, labels.shape).astype(np.int32)).to(dev)
    noise[:, 0] = torch.from_numpy(rng.integers(2, 12, batch).astype(np.int32)).to(dev)
    for tokens in (labels, noise):
        want = invert_batch_ref(tokens, dihedral, cmap, canvas)
        out = (torch.full((batch, canvas, canvas), 77, dtype=torch.uint8, device=dev),
               torch.full((batch, 2), -7, dtype=torch.int32, device=dev))  # fmt: skip
        got = _invert_fwd(tokens, dihedral, cmap, canvas, out=out)
        assert torch.equal(got[1], want[1]), f"shapes {got[1].tolist()} != {want[1].tolist()}"
        bad = (got[0] != want[0]).nonzero()
        assert len(bad) == 0, f"grids: {len(bad)} cells differ, first at {bad[:5].tolist()}"
    # Round trip through both kernels.
    x = _augment_fwd(bi, bo, shapes, pair, dihedral, cmap, zero, canvas)[1]
    grids, shp = _invert_fwd(x, dihedral, cmap, canvas)
    assert torch.equal(grids, bo[pair]) and torch.equal(shp, shapes[pair][:, 2:])


@pytest.mark.parametrize("preset,batch", [("seed", 20), ("paper", 768)])
def test_aot_specs(preset, batch):
    specs = aot_specs(preset_shape(preset))
    assert {s.name for s in specs} == {"augment_batch", "invert_batch"}
    for s in specs:
        assert s.grid[0] == batch
        assert set(s.signature) == set(s.fn.arg_names)
        assert all(s.signature[k] == "constexpr" for k in s.constexprs)


def test_public_functions_dispatch_to_reference_on_cpu():
    rng = np.random.default_rng(0)
    bi, bo, shapes = _bank(rng, 4, 7, "cpu")
    pair, dihedral, cmap, offset = _batch(rng, shapes, 5, 7, True, "cpu")
    args = (bi, bo, shapes, pair, dihedral, cmap, offset, 7)
    for g, w in zip(augment_batch(*args), augment_batch_ref(*args), strict=True):
        assert torch.equal(g, w)
    x = augment_batch_ref(*args)[1]
    for g, w in zip(invert_batch(x, dihedral, cmap, 7), invert_batch_ref(x, dihedral, cmap, 7),
                    strict=True):  # fmt: skip
        assert torch.equal(g, w)
    assert hasattr(torch.ops.hrm_fast, "augment_batch")
    assert hasattr(torch.ops.hrm_fast, "invert_batch")


AOT_SCRIPT = """
import os, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from hrm_fast.compile_report import preset_shape
from hrm_fast.kernels.augment import aot_specs
tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
for cc, spec in [(int(cc), s) for cc in sys.argv[1:] for s in aot_specs(preset_shape("paper"))]:
    sig, cx = spec.signature, spec.constexprs
    src = triton.compiler.ASTSource(fn=spec.fn, signature=sig, constexprs=cx)
    opts = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=opts)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    print(cc, spec.name, [l.strip() for l in out.splitlines() if "REG:" in l][0])
"""


@pytest.mark.static
def test_aot_compile_no_spills():
    # The interpreter replaces @triton.jit functions, so compile in a fresh process.
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "0"}
    res = subprocess.run([sys.executable, "-c", AOT_SCRIPT, "80", "89", "90"], capture_output=True,
                         text=True, env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 6, res.stdout
    for line in lines:
        assert "LOCAL:0" in line and "STACK:0" in line, f"spills: {line}"
