"""The prompt-processing product Y = X W^T, for many tokens at once.

Compute-bound. Each thread of the pool takes tiles of weight rows in turn: it decodes
a tile into its own float32 buffer (Numba, GIL released) and multiplies the tokens by
it with single-threaded BLAS, writing straight into the output's columns, while the
tile is still in that core's cache.
"""

from __future__ import annotations

import numpy as np

from .dequant import row_kernels
from .threads import run_split

TILE_BYTES = 1 << 20  # float32 bytes of dequantized weights per tile...
MIN_TILE_ROWS = 128  # ...but at least this many rows: BLAS is slow on thin matrices


def matmul_tiled(qtype: int, data: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(n, cols) float32 x times the (rows, cols) matrix in `data`, transposed."""
    rows, cols = data.shape[0], x.shape[1]
    tile_rows = min(rows, max(MIN_TILE_ROWS, TILE_BYTES // (4 * cols)))
    y = np.empty((x.shape[0], rows), np.float32)
    decode = row_kernels(qtype)[0]

    def multiply(starts):
        tile = np.empty((tile_rows, cols), np.float32)
        for r0 in starts:
            r1 = min(rows, r0 + tile_rows)
            t = tile[:r1 - r0]
            decode(data[r0:r1], t)
            np.matmul(x, t.T, out=y[:, r0:r1])

    run_split(multiply, range(0, rows, tile_rows))
    return y
