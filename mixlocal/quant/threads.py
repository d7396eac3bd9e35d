"""How many threads the kernels use: Numba's prange and numpy's BLAS (OpenBLAS).

Numba's count can change at any time. OpenBLAS reads OPENBLAS_NUM_THREADS once, at
import; afterwards only its own set_num_threads changes it, so this module finds that
function in the OpenBLAS that numpy loaded (wheels rename it; other BLAS builds are
left alone).
"""

from __future__ import annotations

import ctypes
import glob
import os

import numba
import numpy as np

_BLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                 "openblas_set_num_threads64_", "openblas_set_num_threads")


def _blas_setter():
    libs_dir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in glob.glob(os.path.join(libs_dir, "*openblas*.so*")):
        lib = ctypes.CDLL(path)
        for name in _BLAS_SETTERS:
            if hasattr(lib, name):
                return getattr(lib, name)
    return None


def set_threads(n: int) -> int:
    """Use n threads (at most Numba's NUMBA_NUM_THREADS) in every kernel; returns n used."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    setter = _blas_setter()
    if setter is not None:
        setter(n)
    return n
