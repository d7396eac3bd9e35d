"""Which matrix-vector kernels this CPU can run, and which one mixlocal uses.

Compiling an instruction the CPU lacks (a VNNI intrinsic on an AVX2-only CPU) aborts
the whole process inside LLVM, so a path is compiled only after its features are seen
here. MIXLOCAL_KERNELS=vnni|avx2|plain asks for one path (tests, comparisons).
"""

from __future__ import annotations

import os
import sys
from functools import cache

PATHS = ("vnni", "avx2", "plain")  # fastest first

# LLVM feature names each path's intrinsics need.
_NEEDS = {
    "vnni": frozenset({"avx512vnni", "avx512vl", "avx512bw", "avx2", "fma", "f16c"}),
    "avx2": frozenset({"avx2", "fma", "f16c"}),
    "plain": frozenset(),
}


@cache
def host_features() -> frozenset[str]:
    """The CPU features Numba compiles for: this host's, unless NUMBA_CPU_FEATURES (or
    NUMBA_CPU_NAME=generic) names others, e.g. to build caches for other machines."""
    from llvmlite import binding
    from numba.core import config
    flat = config.CPU_FEATURES
    if flat is None:
        try:
            flat = binding.get_host_cpu_features().flatten()
        except RuntimeError:  # llvmlite cannot query this platform
            flat = ""
    return frozenset(f[1:] for f in flat.split(",") if f.startswith("+"))


def available_paths() -> tuple[str, ...]:
    """The kernel paths this CPU can run, fastest first ("plain" always)."""
    have = host_features()
    return tuple(p for p in PATHS if _NEEDS[p] <= have)


@cache
def kernel_path() -> str:
    """The path in use: MIXLOCAL_KERNELS if this CPU has it, else the fastest."""
    paths = available_paths()
    want = os.environ.get("MIXLOCAL_KERNELS", "").strip().lower()
    if want and want not in paths:
        why = "unknown path" if want not in PATHS else "this CPU lacks " + ", ".join(
            sorted(_NEEDS[want] - host_features()))
        print(f"mixlocal: MIXLOCAL_KERNELS={want} ignored ({why}); using {paths[0]}",
              file=sys.stderr)
        want = ""
    return want or paths[0]
