"""Attention on x86 CPUs with AVX-512: a C++ kernel (cpu_attention.cpp) in place of SDPA.

PyTorch's CPU flash kernel ran bf16 attention no faster than fp32 on the CPU we measured
(docs/performance.md), well below the rate of its matmuls at head dims 16-64. This kernel keeps
its numerics (fp32 scores and softmax, probabilities rounded to the input dtype, fp32 sums)
with AVX512-BF16 dot products for bf16 and AVX-512 FMAs for fp32, forward and backward (the
forward returns the log-sum-exp the backward recomputes the probabilities from).

The library is built on first use (a few seconds) with the C++ compiler that torch.compile's
CPU backend needs too, cached under ``$HRM_FAST_CACHE_DIR/cpu_attention`` (default
``~/.cache/hrm-fast/cpu_attention``) by a hash of the source, the compiler, the flags and the
OpenMP runtime torch has loaded, which it links against so that both share one thread pool.
Where anything is missing (not Linux x86-64, no AVX-512, no compiler, a failed build)
``status()`` says why and callers use SDPA.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from hrm_fast.kernels._common import cache_root
from torch.utils.flop_counter import (
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

SOURCE = Path(__file__).with_name("cpu_attention.cpp")
FLAGS = ("-O3", "-std=c++17", "-fPIC", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512dq",
         "-mavx512vl", "-mavx512bf16", "-mfma")  # fmt: skip
BUILD_TIMEOUT_S = 300


def _openmp_runtime() -> str | None:
    """The OpenMP library this process has mapped (torch's), so the kernel joins its pool."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    for line in maps:
        path = line.split()[-1] if line.split() else ""
        name = os.path.basename(path)
        if name.startswith(("libgomp", "libiomp5", "libomp")) and ".so" in name:
            return path
    return None


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _build(cxx: str, runtime: str) -> Path:
    """Compiles the kernel once per source/compiler/flags/runtime; returns the cached library."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    key = hashlib.sha256(
        b"\0".join(
            [
                SOURCE.read_bytes(),
                version.stdout.encode(),
                " ".join(FLAGS).encode(),
                runtime.encode(),
            ]
        )  # fmt: skip
    ).hexdigest()[:16]
    target = cache_root() / "cpu_attention" / f"{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        obj, lib = Path(tmp) / "cpu_attention.o", Path(tmp) / "cpu_attention.so"
        for cmd in (
            [cxx, *FLAGS, "-c", str(SOURCE), "-o", str(obj)],
            # Linked against the runtime torch loaded (not -fopenmp's default): one thread pool.
            [
                cxx,
                "-shared",
                str(obj),
                runtime,
                f"-Wl,-rpath,{Path(runtime).parent}",
                "-o",
                str(lib),
            ],  # fmt: skip
        ):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"{Path(cmd[0]).name} exited {done.returncode}: {last}")
        os.replace(lib, target)  # atomic: a concurrent build of the same key writes the same file
    return target


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(library, what this process runs): the library is None where the kernel can't run."""
    if os.environ.get("HRM_FAST_CPU_ATTENTION", "1") == "0":
        return None, "sdpa (HRM_FAST_CPU_ATTENTION=0)"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        here = f"{platform.system()} {platform.machine()}"
        return None, f"sdpa (the CPU kernel is for Linux x86-64, not {here})"
    capability = torch.backends.cpu.get_cpu_capability()
    if "AVX512" not in capability:
        return None, f"sdpa (no AVX-512 on this CPU: torch reports {capability})"
    cxx = _compiler()
    if cxx is None:
        return None, "sdpa (no C++ compiler: set CXX or install g++)"
    runtime = _openmp_runtime()
    if runtime is None:
        return None, "sdpa (torch has no OpenMP runtime loaded to share)"
    try:
        path = _build(cxx, runtime)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return None, f"sdpa (the CPU kernel did not build: {e})"
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    lib.hrm_fast_cpu_attention.restype = i32
    lib.hrm_fast_cpu_attention.argtypes = [i32, *[ptr] * 5, *[i32] * 4, ptr]
    lib.hrm_fast_cpu_attention_backward.restype = i32
    lib.hrm_fast_cpu_attention_backward.argtypes = [i32, *[ptr] * 9, *[i32] * 4, ptr]
    lib.hrm_fast_cpu_attention_supports.restype = ctypes.c_int
    bf16 = "fp32 and bf16" if torch.cpu._is_avx512_bf16_supported() else "fp32 (no AVX512-BF16)"
    return lib, f"hrm-fast CPU kernel ({bf16}; {path})"


def status() -> str:
    """One line: what CPU attention this process runs, and why when it is SDPA."""
    return _load()[1]


HEAD_DIMS = (16, 32, 48, 64, 96, 128)


def supported() -> frozenset[tuple[torch.dtype, int]]:
    """The (dtype, head dim) pairs the kernel runs on this machine; builds it on first call."""
    lib = _load()[0]
    if lib is None:
        return frozenset()
    dtypes = [torch.float32] + ([torch.bfloat16] if torch.cpu._is_avx512_bf16_supported() else [])
    dims = [d for d in HEAD_DIMS if lib.hrm_fast_cpu_attention_supports(d)]
    return frozenset((dt, d) for dt in dtypes for d in dims)


# --------------------------------------------------------------------------- the op


def _strides(t: torch.Tensor) -> list[int]:
    return [t.stride(0), t.stride(1), t.stride(2)]  # (batch, position, head)


def _strided(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _call(name: str, tensors: list[torch.Tensor], q: torch.Tensor) -> None:
    b, s, h, d = q.shape
    ptrs = [t.data_ptr() for t in tensors if t.dim() == 4] + [
        t.data_ptr() for t in tensors if t.dim() == 3
    ]
    strides = torch.tensor([_strides(t) for t in tensors if t.dim() == 4], dtype=torch.int64)
    rc = getattr(_load()[0], name)(
        int(q.dtype == torch.bfloat16), *ptrs, b, h, s, d, strides.data_ptr()
    )
    if rc != 0:
        raise ValueError(f"cpu_attention: head dim {d} is not compiled in")


@torch.library.custom_op("hrm_fast::cpu_attention", mutates_args=())
def cpu_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal attention, scale 1/sqrt(D). q, k, v: [B, S, H, D] (any strides).
    Returns out [B, S, H, D] (contiguous) and the log-sum-exp [B, H, S] (fp32)."""
    q, k, v = _strided(q), _strided(k), _strided(v)
    b, s, h, d = q.shape
    out = torch.empty(b, s, h, d, dtype=q.dtype)
    lse = torch.empty(b, h, s, dtype=torch.float32)
    # The C signature orders the [B, S, H, D] tensors first, then the log-sum-exp.
    _call("hrm_fast_cpu_attention", [q, k, v, out, lse], q)
    return out, lse


@cpu_attention.register_fake
def _(q, k, v):
    b, s, h, d = q.shape
    return q.new_empty(b, s, h, d), q.new_empty(b, h, s, dtype=torch.float32)


@torch.library.custom_op("hrm_fast::cpu_attention_backward", mutates_args=())
def cpu_attention_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """dq, dk, dv ([B, S, H, D], contiguous) of ``cpu_attention`` from its out and lse."""
    grad_out, q, k, v, out = (_strided(t) for t in (grad_out, q, k, v, out))
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype) for _ in range(3))
    _call("hrm_fast_cpu_attention_backward", [q, k, v, out, grad_out, dq, dk, dv, lse], q)
    return dq, dk, dv


@cpu_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    return torch.ops.hrm_fast.cpu_attention_backward(grad_out, q, k, v, out, lse)


cpu_attention.register_autograd(_backward, setup_context=_setup_context)


def _heads_second(shape) -> tuple[int, int, int, int]:
    b, s, h, d = shape
    return b, h, s, d


# FLOPs as PyTorch counts its SDPA (torch.utils.flop_counter: MFU, the roofline tests).
@register_flop_formula(torch.ops.hrm_fast.cpu_attention)
def _forward_flops(q, k, v, *args, **kwargs) -> int:
    return sdpa_flop_count(*map(_heads_second, (q, k, v)))


@register_flop_formula(torch.ops.hrm_fast.cpu_attention_backward)
def _backward_flops(grad_out, q, k, v, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(*map(_heads_second, (grad_out, q, k, v)))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, S, H, D] q, k, v -> [B, S, H, D]; call where ``(q.dtype, D) in supported()``."""
    return torch.ops.hrm_fast.cpu_attention(q, k, v)[0]


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The numerics the kernel keeps: PyTorch's SDPA on the same [B, S, H, D] views."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    )
    return out.transpose(1, 2)
