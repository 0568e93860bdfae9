"""What every kernel family shares: the interpreter switch and the launch heuristics.

``TRITON_INTERPRET`` is read here once, when the kernels are imported: Triton reads it when it
is imported too, so a later change of the variable changes nothing in this process.
No Triton import here: ``dispatch`` and the references use this module without a GPU stack.
"""

from __future__ import annotations

import os
from pathlib import Path

# Kernels run by Triton's interpreter on CPU tensors (tests); GPU launch tables are not used.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Memory-bound kernels (norms, elementwise, reductions over a few columns): about this many
# elements per program keeps registers low and the grid large, at this many warps.
ELEMENTS_PER_PROGRAM = 2048
MEMORY_BOUND_WARPS = 4


def rows_per_program(block_cols: int) -> int:
    """Rows of a ``[rows, block_cols]`` tile that hold about ELEMENTS_PER_PROGRAM elements."""
    return max(1, ELEMENTS_PER_PROGRAM // block_cols)


def cache_root() -> Path:
    """hrm-fast's cache folder: ``$HRM_FAST_CACHE_DIR``, else ``~/.cache/hrm-fast`` (XDG)."""
    root = os.environ.get("HRM_FAST_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "hrm-fast"
