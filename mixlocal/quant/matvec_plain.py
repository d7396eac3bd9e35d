"""The portable matrix-vector product: dequantize a row, dot it with x.

Plain Numba, for every supported type and any CPU. Rows run in parallel in chunks,
each chunk decoding into its own float32 row buffer (it stays in L1/L2), then a
vectorized float32 dot product.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit, prange

from .dequant import dequant_row

_CHUNK = 16  # rows per parallel task


@njit(cache=True, fastmath={"reassoc", "contract"})
def dot(a, b):
    """Float32 dot product; reassociation lets LLVM split the sum over vector lanes."""
    acc = np.float32(0.0)
    for i in range(a.size):
        acc += a[i] * b[i]
    return acc


def matvec_rows(qtype: int, data: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """y[r] = dequantized row r of `data` (GGML type `qtype`) . x"""
    _kernel(qtype)(data, x, y)


@cache
def _kernel(qtype: int):
    """matvec_rows' kernel for one type: it compiles that type's row decoder alone."""
    @njit(cache=True, parallel=True)
    def kernel(data, x, y):
        rows = data.shape[0]
        for c in prange((rows + _CHUNK - 1) // _CHUNK):
            buf = np.empty(x.size, np.float32)
            for r in range(c * _CHUNK, min(rows, (c + 1) * _CHUNK)):
                dequant_row(qtype, data[r], buf)
                y[r] = dot(buf, x)
    return kernel
