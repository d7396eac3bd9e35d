"""The prompt-processing product Y = X W^T, for many tokens at once.

Compute-bound: a tile of weight rows is dequantized (Numba, rows in parallel) into a
reused float32 buffer, and BLAS multiplies the tokens by it, writing straight into
the output's columns. The tile is small enough to stay in cache between the two.
"""

from __future__ import annotations

import numpy as np

from .dequant import dequant_rows

TILE_BYTES = 1 << 20  # float32 bytes of dequantized weights per tile


def matmul_tiled(qtype: int, data: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(n, cols) float32 x times the (rows, cols) matrix in `data`, transposed."""
    rows, cols = data.shape[0], x.shape[1]
    tile_rows = max(16, min(rows, TILE_BYTES // (4 * cols)))
    tile = np.empty((tile_rows, cols), np.float32)
    y = np.empty((x.shape[0], rows), np.float32)
    for r0 in range(0, rows, tile_rows):
        r1 = min(rows, r0 + tile_rows)
        t = tile[:r1 - r0]
        dequant_rows(qtype, data[r0:r1], t)
        np.matmul(x, t.T, out=y[:, r0:r1])
    return y
