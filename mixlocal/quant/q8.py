"""8-bit quantization of activations, once per product.

The integer kernels multiply weight blocks with activation blocks of the same length:
Q8_0 style (32 values per float32 scale) for the 32-weight formats, Q8_K style (256
values per scale) for the K-quants. Values lie in [-127, 127]: the AVX2 kernels rely
on it (their int16 pair sums must not saturate). Each kind also carries the sums of
its values, per block for Q8_0 and per 16 values for Q8_K (llama.cpp's bsums), which
the kernels use for weight offsets and minimums. A kind may store its int8 values
interleaved, in the order its kernel reads the weights (Quantizer); the steps and sums
stay in x's order.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange


class Q8(NamedTuple):
    q: np.ndarray  # int8 (n,), interleaved as `order` says (see Quantizer)
    d: np.ndarray  # float32 (n // block,): the step of block k of x
    s: np.ndarray  # sums of the values in x's order: float32 per block, int16 per 16 (Q8_K)
    order: tuple = (32, 1)  # (run, pair_stride)

    def values(self) -> np.ndarray:
        """The int8 values in x's order."""
        run, pair_stride = self.order
        if pair_stride == 1:
            return self.q
        span = 2 * pair_stride
        whole = self.q.size // (span * run) * span * run
        stored = [source_run(v, pair_stride) for v in range(span)]
        spans = self.q[:whole].reshape(-1, span, run)[:, np.argsort(stored)]
        return np.concatenate([spans.reshape(-1), self.q[whole:]])

    def dequantize(self) -> np.ndarray:
        """The float32 vector these bytes stand for, in x's order."""
        block = self.q.size // self.d.size
        return (self.values().reshape(-1, block) * self.d[:, None]).reshape(-1)


@njit(cache=True)
def source_run(v, pair_stride):
    """The run of x's values stored v-th where runs r and r + pair_stride are stored
    side by side: 0, p, 1, 1 + p, ..., p - 1, 2p - 1, then the same from 2p on."""
    span = 2 * pair_stride
    return v // span * span + v % 2 * pair_stride + v % span // 2


@njit(cache=True, forceinline=True)
def _stored(p, whole, run, pair_stride):
    """Where the value at position p of a row lands: in each span of 2 pair_stride runs
    of `run` values below position `whole`, the span's run r is stored
    (2 (r % pair_stride) + r // pair_stride)-th, source_run's inverse."""
    span = 2 * pair_stride * run
    if pair_stride == 1 or p >= whole:
        return p
    r = p % span // run
    return p // span * span + (2 * (r % pair_stride) + r // pair_stride) * run + p % run


@njit(cache=True, forceinline=True)
def _row(x, q, d, s, first, stride, group, block, sum_len, run, pair_stride):
    """Block k of x to position (first + (k // group) stride) group + k % group of q, d
    (one each) and s: runs of `group` blocks stay together; its values in q then move as
    _stored says, within such a run of blocks. Inlined where the numbers are constants:
    the loops then vectorize (4-5x over run-time lengths)."""
    bits = x.view(np.int32)
    per_block = block // sum_len
    piece = min(run, sum_len)  # values that stay together, in q and in one sum
    span = 2 * pair_stride * run
    whole = x.size // span * span  # the values in whole spans, which move
    for k in range(x.size // block):
        j = (first + k // group * stride) * group + k % group
        xb, xbits = x[k * block:(k + 1) * block], bits[k * block:(k + 1) * block]
        top = np.int32(0)  # the largest |x| as float bits: an integer max vectorizes
        for i in range(block):
            v = xbits[i] & np.int32(0x7FFFFFFF)
            top = v if v > top else top
        scale = np.int32(top).view(np.float32) / np.float32(127.0)
        inv = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
        d[j] = scale
        if pair_stride == 1:  # nothing moves: a pass each, twice as fast as the loop below
            qb = q[j * block:(j + 1) * block]
            for i in range(block):
                qb[i] = np.int8(np.rint(xb[i] * inv))
            for g in range(per_block):
                total = np.int32(0)  # |sum| <= 32 * 127
                for i in range(g * sum_len, (g + 1) * sum_len):
                    total += np.int32(qb[i])
                s[j * per_block + g] = np.int16(total)
            continue
        # Values move within their span, which lies within the blocks the layout keeps
        # together: block k's offset in q plus the move. Sums stay in x's order.
        for g in range(per_block):
            s[j * per_block + g] = 0
        for c in range(block // piece):
            o = j * block + _stored(k * block + c * piece, whole, run, pair_stride) - k * block
            dst, src = q[o:o + piece], xb[c * piece:(c + 1) * piece]  # slices: indices
            total = np.int32(0)                                         # never negative
            for i in range(piece):
                v = np.int8(np.rint(src[i] * inv))
                dst[i] = v
                total += np.int32(v)
            s[j * per_block + c * piece // sum_len] += np.int16(total)


def _kernels(block: int, sum_len: int, run: int, pair_stride: int):
    """The jitted quantizers of one kind, its numbers constants in them (closures over
    numbers only: Numba's cache keys on their values)."""
    @njit(cache=True)
    def vector(x):
        # allocated here: Numba aligns arrays to 32 bytes, where numpy's large ones sit 16
        # bytes past a page and split vector loads across cache lines (matvec 1.1x slower)
        q = np.empty(x.size, np.int8)
        d = np.empty(x.size // block, np.float32)
        s = np.empty(x.size // sum_len, np.int16)
        _row(x, q, d, s, 0, 1, 1, block, sum_len, run, pair_stride)
        return q, d, s

    @njit(cache=True, parallel=True)
    def rows(x, q, d, s, first, stride, group):
        zeros = np.zeros(x.shape[1], np.float32)  # the rows past x's: padding
        for t in prange(len(first)):
            _row(x[t] if t < len(x) else zeros, q, d, s, first[t], stride[t], group, block,
                 sum_len, run, pair_stride)

    return vector, rows


class Quantizer:
    """One kind of 8-bit activations: blocks of `block` values, sums per `sum_len`. With
    pair_stride > 1 the values move, in each whole span of 2 pair_stride runs of `run`
    values: runs r and r + pair_stride are stored side by side (source_run), the order
    in which a format's kernel reads its weights. The steps d and the sums s stay in x's
    order."""

    def __init__(self, block: int, sum_len: int, float_sums: bool, run: int = 32,
                 pair_stride: int = 1):
        self.block, self.sum_len, self.float_sums = block, sum_len, float_sums
        self.order = (run, pair_stride)
        self._vector, self._rows = _kernels(block, sum_len, run, pair_stride)

    def __call__(self, x: np.ndarray) -> Q8:
        """x, a vector whose length is a multiple of the block, quantized."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 1 or x.size % self.block:
            raise ValueError(f"need a vector whose length is a multiple of {self.block}, "
                             f"got {x.shape}")
        q, d, s = self._vector(x)
        return Q8(q, d, s.astype(np.float32) if self.float_sums else s, self.order)

    def rows(self, x: np.ndarray, first: np.ndarray, stride: np.ndarray, unit: int,
             q: np.ndarray):
        """The rows of x (n, cols), C-contiguous float32, quantized in parallel into q
        (int8), then zero rows up to len(first). Laid out for the GEMM's tiles in units
        of `unit` values (a multiple of the block that divides cols, and of the span the
        values move in): unit k of row t goes to unit first[t] + k stride[t]. Returns
        (q, d, s)."""
        run, pair_stride = self.order
        if pair_stride > 1 and unit % (2 * pair_stride * run):
            raise ValueError(f"units of {unit} values would split spans that move")
        d = np.empty(q.size // self.block, np.float32)
        s = np.empty(q.size // self.sum_len, np.int16)
        self._rows(x, q, d, s, first, stride, unit // self.block)
        return q, d, s.astype(np.float32) if self.float_sums else s


# Q8_0's sums are float32: the kernels subtract them in float
quantize_q8_0 = Quantizer(32, 32, float_sums=True)
# Q8_0 for Q4_0's and Q4_1's matvec, which read blocks k and k + 4 of eight together:
# their low nibbles (values 0-15 of each), then their high ones (16-31)
quantize_q8_0_pairs = Quantizer(32, 32, float_sums=True, run=16, pair_stride=8)
quantize_q8_k = Quantizer(256, 16, float_sums=False)
# Q8_K in the orders of the K-quants' bit fields, so that a 512-bit load and one mask (or
# one shift) give two 32-weight chunks whose activations lie side by side: 64 bytes of
# Q4_K's and Q5_K's nibbles hold chunks 0 and 2 in their low nibbles, 1 and 3 in their
# high ones; 64 bytes of Q2_K's and Q3_K's 2-bit fields hold chunks 0 and 4 in their
# lowest bits, 1 and 5 in the next two, and so on
quantize_q8_k_nibbles = Quantizer(256, 16, float_sums=False, pair_stride=2)
quantize_q8_k_crumbs = Quantizer(256, 16, float_sums=False, pair_stride=4)
