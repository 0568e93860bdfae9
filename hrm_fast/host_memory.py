"""Keep freed host memory in the process for CPU training (glibc malloc).

A CPU step frees and re-allocates the same activation buffers every step. glibc serves blocks
over its adaptive mmap threshold with fresh mmap()s and returns freed heap tops to the kernel,
so every step page-faults its activations in again (tens of thousands of minor faults a step:
kernel time and cold caches). Raising the mmap threshold to glibc's maximum and never trimming
the heap keeps those pages mapped and reused; the process's peak memory is unchanged because
the same blocks come back. docs/performance.md has the measured effect.

Elsewhere (macOS, musl, Windows) this is a no-op that says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
NEVER_TRIM = 2**31 - 1  # an int: mallopt takes one

_state: str | None = None


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # glibc only: musl and macOS have no gnu_get_libc_version (AttributeError).
        libc.gnu_get_libc_version, libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory() -> str:
    """Set glibc to keep freed blocks (once per process); returns what the process now does,
    for ``bench --against``'s record."""
    global _state
    if _state is None:
        libc = _glibc()
        if libc is None:
            _state = "system malloc (not glibc: unchanged)"
        elif libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and libc.mallopt(
            M_TRIM_THRESHOLD, NEVER_TRIM
        ):
            _state = "glibc, freed memory kept (mmap threshold 32 MiB, no trim)"
        else:
            _state = "glibc (mallopt refused: unchanged)"
    return _state
