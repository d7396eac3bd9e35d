"""How the quant kernels use the cores.

The integer kernels (matrix-vector products, and the 8-bit prompt products) run in
Numba's prange. Work in numpy and BLAS runs in one pool of Python threads (`run_split`):
a prompt's attention, and the float path's matrix products, where each thread decodes a
tile with a Numba kernel that releases the GIL and multiplies it with single-threaded
BLAS while it is still in its cache. BLAS is therefore set to one thread when this
module loads: OpenBLAS's spinning workers and Numba's, alternating on the same cores,
ran a 2-core machine 10x slower. For the same reason Numba's own workers spin only
briefly (below).

The thread count is Numba's (`numba.set_num_threads`, or `set_threads` here).
"""

from __future__ import annotations

import ctypes
import glob
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
import numpy as np

_BLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                 "openblas_set_num_threads64_", "openblas_set_num_threads")


def _set_blas_threads(n: int) -> bool:
    """Set the OpenBLAS that numpy loaded (wheels rename its functions) to n threads."""
    libs_dir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in glob.glob(os.path.join(libs_dir, "*openblas*.so*")):
        lib = ctypes.CDLL(path)
        for name in _BLAS_SETTERS:
            if hasattr(lib, name):
                getattr(lib, name)(n)
                return True
    return False


_set_blas_threads(1)

# Numba's OpenMP workers poll for the next parallel region before they sleep: by default
# 300,000 polls, 7-10 ms of a core after every kernel. The numpy work between a prompt's
# kernels, attention's threads above all, then shares its cores with them (attention
# took 12 ms on two threads instead of 8). 30,000 polls, about a millisecond, still
# bridge the gaps between a token's products (10,000 cost two threads' decoding a few
# percent). libgomp reads this once, when Numba first starts its workers; child
# processes inherit it (benchmarks/bench.py gives its llama.cpp workers the environment
# it started with).
os.environ.setdefault("GOMP_SPINCOUNT", "30000")
_pool = ThreadPoolExecutor(max(1, numba.config.NUMBA_NUM_THREADS - 1),
                           thread_name_prefix="mixlocal-quant")


def set_threads(n: int) -> int:
    """Use n threads (at most NUMBA_NUM_THREADS) in every kernel; returns the count used."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


# Below this many weight bytes a product runs on one thread: the work is a few
# microseconds, and a parallel region waits for its slowest thread, which on a busy
# core can be a whole scheduler time slice (a 135M model decoded 5-50x slower). The SIMD
# matvec takes a serial build of its kernel for these (switching Numba's thread count
# cost a small model's 240 products a token 4 us each); the float path, threads_for.
PARALLEL_MIN_BYTES = 1 << 20


@contextmanager
def threads_for(nbytes: int):
    """Run the products inside on one thread when they read fewer than
    PARALLEL_MIN_BYTES (numba's thread count is per calling thread)."""
    n = numba.get_num_threads()
    if nbytes >= PARALLEL_MIN_BYTES or n == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(n)


def run_split(task, items) -> None:
    """Call task(part) on up to get_num_threads() interleaved parts of `items` at once.

    The calling thread does the first part itself; exceptions are re-raised here.
    """
    workers = min(numba.get_num_threads(), len(items))
    if workers <= 1:
        task(items)
        return
    futures = [_pool.submit(task, items[k::workers]) for k in range(1, workers)]
    try:
        task(items[::workers])
    finally:
        for f in futures:
            f.result()
