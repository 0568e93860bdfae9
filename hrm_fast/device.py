"""``--device`` for every command: auto, cpu, cuda, cuda:N or mps, checked before anything runs.

``cuda`` is NVIDIA (CUDA build of torch) or AMD (ROCm build: torch.version.hip is set and the
GPU is a torch "cuda" device); both run the fused Triton backend. ``mps`` is Apple silicon:
the reference backend only (Triton has no Metal backend). ``resolve_runtime`` turns a run's
``--device``, ``--backend`` and ``--dtype`` into what the trainer runs with.
"""

from __future__ import annotations

import torch

from hrm_fast.errors import UserError


def mps_available() -> bool:
    return torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise UserError(f"--device: expected auto, cpu, cuda or mps, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available on this machine")
    if name == "mps" and not mps_available():
        raise UserError("--device mps: no Apple MPS device is available on this machine")
    return torch.device(name)


def mps_supports_bf16() -> bool:
    # MPSGraph has bfloat16 from macOS 14 (Sonoma); torch refuses it on older macOS
    # ("MPS BFloat16 is only supported on MacOS 14 or newer", pytorch PR #119641).
    return torch.backends.mps.is_macos_or_newer(14, 0)


def cpu_computes_bf16() -> bool:
    """x86 CPUs with bf16 dot products in hardware (AVX512-BF16 or AMX): their bf16 matmuls run
    about 4x their fp32 ones (docs/performance.md). Without them bf16 is emulated, so fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes
        return False


def default_dtype(device: torch.device) -> torch.dtype:
    """Activation dtype for ``--dtype auto``: bf16 where the hardware computes it (GPUs, CPUs
    with AVX512-BF16 or AMX, MPS from macOS 14), fp32 elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "mps":
        return torch.bfloat16 if mps_supports_bf16() else torch.float32
    return torch.bfloat16 if cpu_computes_bf16() else torch.float32


def check_device_options(device: torch.device, backend: str, dtype: torch.dtype, graphs: bool):
    """One-line refusals for what a device cannot run."""
    if device.type == "mps":
        if backend == "fused":
            raise UserError(
                "--backend fused: the Triton kernels need a CUDA or ROCm GPU; "
                "on --device mps use --backend reference"
            )
        if graphs:
            raise UserError("--cuda-graphs: CUDA graphs need a CUDA or ROCm GPU, not --device mps")
        if dtype == torch.bfloat16 and not mps_supports_bf16():
            raise UserError("--dtype bf16: MPS has bfloat16 from macOS 14; use --dtype fp32")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``--dtype`` (auto, fp32, bf16, fp16) as a torch dtype on this device."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name == "auto":
        return default_dtype(device)
    if name not in dtypes:
        raise UserError(f"--dtype: expected auto, fp32, bf16 or fp16, got {name!r}")
    return dtypes[name]


def resolve_runtime(cfg) -> tuple[torch.device, str, torch.dtype]:
    """(device, backend, dtype) for a RunConfig's train section; UserError for what cannot run."""
    t = cfg.train
    device = resolve_device(t.device)
    backend = t.backend
    if backend == "auto":
        backend = "fused" if device.type == "cuda" else "reference"
    if backend not in ("reference", "fused"):
        raise UserError(f"--backend: expected auto, reference or fused, got {backend!r}")
    dtype = resolve_dtype(t.dtype, device)
    check_device_options(device, backend, dtype, t.cuda_graphs)
    if t.cuda_graphs and device.type != "cuda":
        raise UserError("--cuda-graphs needs a CUDA device")
    return device, backend, dtype


# A CPU run compiles its step under ``--compile auto`` when its planned matmul and attention
# work (roofline FLOPs x steps) reaches this: below it the compile costs more than it saves
# (docs/performance.md has the measured compile and step times behind the figure).
CPU_COMPILE_MIN_FLOPS = 50e12


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would build CPU code with (its CXX, else the usual names)."""
    import os
    import shutil

    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((found for n in names if (found := shutil.which(n))), None)


def resolve_compile(t, device: torch.device, backend: str, step_flops: float) -> tuple[bool, str]:
    """(compile the step?, why) for a train section's ``--compile`` on this device.

    ``auto`` keeps every GPU run as it was (fused kernels, CUDA graphs) and compiles a CPU run of
    the reference backend when its work (``step_flops`` per step, from hrm_fast.roofline, x
    steps) is large enough and a C++ compiler is there to build it.
    """
    if t.compile == "true":
        if device.type == "cpu" and cxx_compiler() is None:
            raise UserError(
                "--compile true: torch.compile on a CPU builds C++ and no compiler (g++, c++, "
                "clang++ or $CXX) is on PATH; install one or use --compile false"
            )
        return True, "--compile true"
    if t.compile == "false":
        return False, "--compile false"
    if device.type != "cpu" or backend != "reference":
        return False, f"auto: not on {device.type}"
    work = t.steps * step_flops
    why = f"{t.steps} steps x {step_flops / 1e12:.3g} TFLOP"
    if work < CPU_COMPILE_MIN_FLOPS:
        return False, f"auto: {why} < {CPU_COMPILE_MIN_FLOPS / 1e12:.0f} TFLOP, short run"
    if cxx_compiler() is None:
        return False, "auto: no C++ compiler on PATH"
    return True, f"auto: {why} on cpu"
