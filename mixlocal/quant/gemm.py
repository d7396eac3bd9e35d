"""Prompt processing on 8-bit activations: Y = X W^T straight from the quantized blocks.

Each token's row of X is quantized once, as matvec does for one vector (q8.py). The
kernels then walk tiles of weight rows by tokens block by block, calling matvec's block
functions once per (row, token): inlined, they share each weight block's decoding
across the tokens and each activation block's loads across the rows, so the weights
are read from memory once per product and the work is compute-bound. Tile shapes, as
measured here: 4 rows x 4 tokens for the 32-weight formats, whose blocks are cheap to
decode; 1 row x 8 tokens for the K-quants, whose super-blocks' scales are worth
decoding once for more tokens (1.3x over 4 x 4). For a MoE expert's share of a prompt
(tens of tokens) this beats dequantizing to float for BLAS by 2-3x.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit, prange

from .matvec import BY_QTYPE, FLOAT_SUMS, FORMATS, _block
from .simd import hsum, zeros_f32

CHUNK_BYTES = 256 << 10  # 8-bit activations per kernel call
TOKENS = 4  # tokens per step of a tile; X is padded with zero rows to a multiple of it

_QUANTIZE = {qtype: quantize for qtype, _, quantize in FORMATS.values()}


@njit(cache=True, forceinline=True)
def _four(fmt, path, acc, corr, w, o, xq, xd, xs, tb, nb):
    """Weight block b of the row at byte o against tokens t..t+3, tb = t nb + b: the
    block functions index the whole (tokens, ...) arrays by flat block number, so the
    tokens share one base pointer (per-token views ran out of registers)."""
    a0, c0 = _block(fmt, path, acc[0], corr[0], w, o, xq, xd, xs, tb)
    a1, c1 = _block(fmt, path, acc[1], corr[1], w, o, xq, xd, xs, tb + nb)
    a2, c2 = _block(fmt, path, acc[2], corr[2], w, o, xq, xd, xs, tb + 2 * nb)
    a3, c3 = _block(fmt, path, acc[3], corr[3], w, o, xq, xd, xs, tb + 3 * nb)
    return (a0, a1, a2, a3), (c0, c1, c2, c3)


@njit(cache=True, forceinline=True)
def _store(y, r, t, acc, corr):
    for k in range(TOKENS):
        y[t + k, r] = hsum(acc[k]) + corr[k]


def _kernel_4x4(fmt: str, path: str):
    @njit(cache=True, parallel=True)
    def kernel(w, xq, xd, xs, y):
        """y[t, r] = row r of w . token t of (xq, xd, xs), for t < len(xd) (a multiple
        of 4); tiles of 4 rows split across threads (the last tile repeats its last
        row where the rows run out)."""
        n, nb = xd.shape
        rows, step = w.shape[0], w.shape[1] // nb  # step: bytes per block
        zero = np.float32(0.0)
        for tile in prange((rows + 3) // 4):
            r0 = 4 * tile
            r1, r2, r3 = min(r0 + 1, rows - 1), min(r0 + 2, rows - 1), min(r0 + 3, rows - 1)
            for t in range(0, n, TOKENS):
                acc0 = acc1 = acc2 = acc3 = (zeros_f32(), zeros_f32(), zeros_f32(), zeros_f32())
                corr0 = corr1 = corr2 = corr3 = (zero, zero, zero, zero)
                for b in range(nb):
                    tb = t * nb + b
                    acc0, corr0 = _four(fmt, path, acc0, corr0, w, (r0 * nb + b) * step,
                                        xq, xd, xs, tb, nb)
                    acc1, corr1 = _four(fmt, path, acc1, corr1, w, (r1 * nb + b) * step,
                                        xq, xd, xs, tb, nb)
                    acc2, corr2 = _four(fmt, path, acc2, corr2, w, (r2 * nb + b) * step,
                                        xq, xd, xs, tb, nb)
                    acc3, corr3 = _four(fmt, path, acc3, corr3, w, (r3 * nb + b) * step,
                                        xq, xd, xs, tb, nb)
                _store(y, r0, t, acc0, corr0)
                _store(y, r1, t, acc1, corr1)
                _store(y, r2, t, acc2, corr2)
                _store(y, r3, t, acc3, corr3)
    return kernel


def _kernel_1x8(fmt: str, path: str):
    @njit(cache=True, parallel=True)
    def kernel(w, xq, xd, xs, y):
        """As the 4 x 4 kernel, with each row against 8 tokens at a time (4 at the end
        when len(xd) is not a multiple of 8); rows split across threads."""
        n, nb = xd.shape
        step = w.shape[1] // nb
        zero = np.float32(0.0)
        for r in prange(w.shape[0]):
            o = r * w.shape[1]
            for t in range(0, n - 7, 8):
                acc0 = acc1 = (zeros_f32(), zeros_f32(), zeros_f32(), zeros_f32())
                corr0 = corr1 = (zero, zero, zero, zero)
                for b in range(nb):
                    tb = t * nb + b
                    acc0, corr0 = _four(fmt, path, acc0, corr0, w, o + b * step, xq, xd, xs,
                                        tb, nb)
                    acc1, corr1 = _four(fmt, path, acc1, corr1, w, o + b * step, xq, xd, xs,
                                        tb + 4 * nb, nb)
                _store(y, r, t, acc0, corr0)
                _store(y, r, t + 4, acc1, corr1)
            if n % 8:
                t = n - TOKENS
                acc0 = (zeros_f32(), zeros_f32(), zeros_f32(), zeros_f32())
                corr0 = (zero, zero, zero, zero)
                for b in range(nb):
                    acc0, corr0 = _four(fmt, path, acc0, corr0, w, o + b * step, xq, xd, xs,
                                        t * nb + b, nb)
                _store(y, r, t, acc0, corr0)
    return kernel


@cache
def kernels(path: str) -> dict:
    """{GGUF type: kernel(w, xq, xd, xs, y)} for a SIMD path ("vnni" or "avx2").

    Compiles lazily, per type on first use; call only with a path this CPU has.
    """
    return {qtype: (_kernel_1x8 if name.endswith("_k") else _kernel_4x4)(
                name + "_fsums" if name in FLOAT_SUMS else name, path)
            for name, (qtype, _, _) in FORMATS.items()}


def matmul_q8(path: str, qtype, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(n, cols) float32 x times the blocks w (rows, row_bytes), transposed: (n, rows).

    Tokens are quantized to 8 bits as matvec quantizes its vector (relative error
    about 1e-2 against float weights times float x).
    """
    n = len(x)
    padded = -(-n // TOKENS) * TOKENS
    rows = [_QUANTIZE[qtype](v) for v in x]
    rows += [_QUANTIZE[qtype](np.zeros_like(x[0]))] * (padded - n)
    xq, xd, xs = (np.stack(part) for part in zip(*rows))
    if BY_QTYPE[qtype] in FLOAT_SUMS:
        # -da times each 32-weight chunk's activation sum, in float32: the weights'
        # minimums meet these in one FMA per super-block and token
        xs = (xs.reshape(padded, -1, 8, 2).sum(-1, dtype=np.float32)
              * -xd[:, :, None]).reshape(padded, -1)
    y = np.empty((padded, w.shape[0]), np.float32)
    kernel = kernels(path)[qtype]
    # Tokens in chunks whose activations stay in L2 while every row passes over them.
    chunk = max(8, CHUNK_BYTES // xq.shape[1] // 8 * 8)
    for t in range(0, padded, chunk):
        kernel(w, xq[t:t + chunk], xd[t:t + chunk], xs[t:t + chunk], y[t:t + chunk])
    return y[:n]
