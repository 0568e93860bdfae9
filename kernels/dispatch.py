"""Which path a public kernel entry point takes: Triton for CUDA tensors, the eager
reference for CPU tensors.

``triton_on_cpu()`` sends CPU tensors through the same ``triton_op``s and their registered
autograd instead, run by Triton's interpreter. It exists so that a whole fused training step
(every kernel, its launcher and its backward wiring) can be checked against the reference
on a machine without a GPU.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ._common import INTERPRET
from .aot import target_family

_triton_on_cpu = False


def use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda or _triton_on_cpu


@contextmanager
def triton_on_cpu():
    """Run the Triton kernels on CPU tensors (needs ``TRITON_INTERPRET=1`` before import)."""
    if not INTERPRET:
        raise RuntimeError("triton_on_cpu() needs TRITON_INTERPRET=1 set before triton is imported")
    global _triton_on_cpu
    previous, _triton_on_cpu = _triton_on_cpu, True
    try:
        yield
    finally:
        _triton_on_cpu = previous


def device_target_family(device: torch.device) -> str:
    """Target family (kernels/aot.py) of a torch CUDA device: ROCm GPUs are torch "cuda"
    devices too, told apart by torch.version.hip and the gfx name."""
    if torch.version.hip is None:
        return "nvidia"
    return _rocm_family(torch.device(device).index or 0)


# A constant for torch.compile: the fused step is traced with fullgraph=True, and the device's
# properties are fixed for the life of the process.
@torch.compiler.assume_constant_result
def _rocm_family(index: int) -> str:
    return target_family(torch.cuda.get_device_properties(index).gcnArchName)
