"""The portable matrix-vector product: dequantize a row, dot it with x.

Plain Numba, for every supported type and any CPU. Rows run in parallel in chunks,
each chunk decoding into its own float32 row buffer (it stays in L1/L2); the dot keeps
16 float32 partial sums so LLVM vectorizes it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .dequant import dequant_row

_CHUNK = 16  # rows per parallel task


@njit(cache=True, inline="always")
def dot16(a, b):
    """Float32 dot product with 16 partial sums (vectorizable, order-tolerant)."""
    acc = np.zeros(16, np.float32)
    n16 = a.size - a.size % 16
    for i in range(0, n16, 16):
        for lane in range(16):
            acc[lane] += a[i + lane] * b[i + lane]
    for i in range(n16, a.size):
        acc[0] += a[i] * b[i]
    return acc.sum()


@njit(cache=True, parallel=True)
def matvec_rows(qtype, data, x, y):
    """y[r] = dequantized row r of `data` . x"""
    rows = data.shape[0]
    for c in prange((rows + _CHUNK - 1) // _CHUNK):
        buf = np.empty(x.size, np.float32)
        for r in range(c * _CHUNK, min(rows, (c + 1) * _CHUNK)):
            dequant_row(qtype, data[r], buf)
            y[r] = dot16(buf, x)
