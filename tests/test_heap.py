"""heap.keep_freed_memory: freed temporaries serve the next pass without page faults."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Five 10 MiB arrays, freed together, round after round, as a prompt's temporaries are:
# glibc's defaults hand the top of the heap back and the next round faults it in again.
_ROUNDS = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from mixlocal.heap import keep_freed_memory
    assert keep_freed_memory()
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    arrays = [np.ones(10 << 18, np.float32) for _ in range(5)]
    del arrays
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_per_round(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True,
                         text=True, check=True).stdout
    return [int(line) for line in out.split()]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_freed_temporaries_are_reused_without_page_faults():
    default, kept = _faults_per_round("default"), _faults_per_round("keep")
    # each round touches 12,800 pages; by default the later rounds fault most back in
    assert min(default[1:]) > 1000, f"glibc kept the pages by default: {default}"
    assert max(kept[1:]) < 100, kept
