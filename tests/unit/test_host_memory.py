"""hrm_fast.host_memory: after keep_freed_memory(), re-allocating the same buffers no longer
page-faults them in again (glibc), and elsewhere it is a no-op that says so."""

import subprocess
import sys

import pytest

from hrm_fast import host_memory

# Ten "steps", each writing and freeing one activation a little larger than the last (16 MiB
# and up). Under glibc's defaults each is above the adaptive mmap threshold, so each is a fresh
# mmap whose every page faults in; kept, they reuse the heap and fault only the growth.
STEPS = """
import resource, sys, torch
from hrm_fast.host_memory import keep_freed_memory

def faults():
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(10):
        block = torch.empty((16 * 2**20 + i * 2**18) // 4).fill_(1.0)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

if sys.argv[1] == "keep":
    print(keep_freed_memory())
    faults()  # the first steps map their pages once
    # The fewest of three rounds: the kernel itself (page compaction, migration) can fault a
    # mapped page in now and then, and once a CI run saw 36 MiB of such faults in one round.
    print(min(faults() for _ in range(3)))
else:  # the first round: later ones see glibc's raised adaptive threshold
    print(faults())
"""
PAGES_PER_STEP = 16 * 2**20 // 4096


def run_steps(mode: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return out.split("\n")[:-1]


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc malloc only")
def test_kept_memory_is_not_faulted_in_again():
    default = int(run_steps("default")[-1])
    state, kept = run_steps("keep")
    # Defaults: ten steps fault ten blocks in; kept: under 10% of one block's pages.
    assert default > 5 * PAGES_PER_STEP, default
    assert int(kept) < PAGES_PER_STEP // 10, kept
    assert state.startswith("glibc, freed memory kept")


def test_not_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(host_memory, "_state", None)
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    assert host_memory.keep_freed_memory() == "system malloc (not glibc: unchanged)"
