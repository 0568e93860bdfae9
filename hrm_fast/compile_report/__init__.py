"""Ahead-of-time GPU compile report for every kernel family (no GPU needed).

For every preset's launch shapes (``specs``), every family's ``aot_specs`` and every GPU target,
``triton.compile`` runs the same pipeline a launch uses and the report reads what the hardware
will see: registers, spills, shared memory / LDS, tensor-core instructions (``nvidia``: cubin
and SASS; ``amd``: the AMDGCN listing) and the theoretical occupancy (``occupancy_model``).
``driver`` compiles in worker processes and judges the rows; ``command`` is
``hrm-fast kernels-report`` (``python -m hrm_fast.compile_report`` in the CMake build).

Not the run dashboard (``hrm-fast report``), and not needed at run time: the kernels in
``hrm_fast.kernels`` import nothing from here.
"""

from hrm_fast.kernels.aot import target_family

from .amd import detect_amd_mma, parse_amdgcn
from .command import format_table, main, parse_arch
from .driver import (
    DEFAULT_ARCHS,
    arch_name,
    compile_all,
    compile_spec,
    interpreter_state_in_process,
    row_failures,
    run_report,
)
from .nvidia import detect_mma, parse_ptxas_log, parse_resource_usage
from .occupancy_model import AMD_LIMITS, ARCH_LIMITS, amd_occupancy, occupancy
from .specs import FAMILIES, PRESET_SHAPES, PRESETS, collect_specs, launch_shape, preset_shape

__all__ = [
    "AMD_LIMITS",
    "ARCH_LIMITS",
    "DEFAULT_ARCHS",
    "FAMILIES",
    "PRESETS",
    "PRESET_SHAPES",
    "amd_occupancy",
    "arch_name",
    "collect_specs",
    "compile_all",
    "compile_spec",
    "detect_amd_mma",
    "detect_mma",
    "format_table",
    "interpreter_state_in_process",
    "launch_shape",
    "main",
    "occupancy",
    "parse_amdgcn",
    "parse_arch",
    "parse_ptxas_log",
    "parse_resource_usage",
    "preset_shape",
    "row_failures",
    "run_report",
    "target_family",
]
