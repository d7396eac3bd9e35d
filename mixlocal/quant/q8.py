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
    order: tuple = (32, ())  # (run, the runs of a span in their stored order)

    def values(self) -> np.ndarray:
        """The int8 values in x's order."""
        run, runs = self.order
        if not runs:
            return self.q
        whole = self.q.size // (len(runs) * run) * len(runs) * run
        spans = self.q[:whole].reshape(-1, len(runs), run)[:, np.argsort(runs)]
        return np.concatenate([spans.reshape(-1), self.q[whole:]])

    def dequantize(self) -> np.ndarray:
        """The float32 vector these bytes stand for, in x's order."""
        block = self.q.size // self.d.size
        return (self.values().reshape(-1, block) * self.d[:, None]).reshape(-1)


def side_by_side(stride: int, count: int = 0) -> tuple:
    """The first `count` (2 stride) runs in their stored order when runs r and r + stride
    are stored side by side: 0, stride, 1, 1 + stride, ..., stride - 1, 2 stride - 1,
    then the same from 2 stride on."""
    span = 2 * stride
    return tuple(v // span * span + v % 2 * stride + v % span // 2 for v in range(count or span))


@njit(cache=True, forceinline=True)
def _stored(p, whole, run, places):
    """Where the value at position p of a row lands: in each span of len(places) runs
    of `run` values below position `whole`, the span's run r is stored places[r]-th."""
    span = len(places) * run
    if p >= whole:
        return p
    r = p % span // run
    return p // span * span + places[r] * run + p % run


@njit(cache=True, forceinline=True)
def _row(x, q, d, s, first, stride, group, block, sum_len, run, places):
    """Block k of x to position (first + (k // group) stride) group + k % group of q, d
    (one each) and s: runs of `group` blocks stay together; its values in q then move as
    _stored says, within such a run of blocks. Inlined where the numbers are constants:
    the loops then vectorize (4-5x over run-time lengths)."""
    bits = x.view(np.int32)
    per_block = block // sum_len
    piece = min(run, sum_len)  # values that stay together, in q and in one sum
    span = len(places) * run
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
        if len(places) == 1:  # nothing moves: a pass each, twice as fast as the loop below
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
            o = j * block + _stored(k * block + c * piece, whole, run, places) - k * block
            dst, src = q[o:o + piece], xb[c * piece:(c + 1) * piece]  # slices: indices
            total = np.int32(0)                                         # never negative
            for i in range(piece):
                v = np.int8(np.rint(src[i] * inv))
                dst[i] = v
                total += np.int32(v)
            s[j * per_block + c * piece // sum_len] += np.int16(total)


def _kernels(block: int, sum_len: int, run: int, places: tuple, float_sums: bool):
    """The jitted quantizers of one kind, its numbers constants in them (closures over
    numbers only: Numba's cache keys on their values)."""
    @njit(cache=True)
    def vector(x):
        # allocated here: Numba aligns arrays to 32 bytes, where numpy's large ones sit 16
        # bytes past a page and split vector loads across cache lines (matvec 1.1x slower)
        q = np.empty(x.size, np.int8)
        d = np.empty(x.size // block, np.float32)
        s = np.empty(x.size // sum_len, np.float32 if float_sums else np.int16)
        _row(x, q, d, s, 0, 1, 1, block, sum_len, run, places)
        return q, d, s

    @njit(cache=True, parallel=True)
    def rows(x, q, d, s, first, stride, group):
        zeros = np.zeros(x.shape[1], np.float32)  # the rows past x's: padding
        for t in prange(len(first)):
            _row(x[t] if t < len(x) else zeros, q, d, s, first[t], stride[t], group, block,
                 sum_len, run, places)

    return vector, rows


class Quantizer:
    """One kind of 8-bit activations: blocks of `block` values, sums per `sum_len`. With
    `runs` the values move, in each whole span of len(runs) runs of `run` values: the
    span's runs stored in the order `runs` names them, the order in which a format's
    kernel reads its weights. The steps d and the sums s stay in x's order."""

    def __init__(self, block: int, sum_len: int, float_sums: bool, run: int = 32,
                 runs: tuple = ()):
        self.block, self.sum_len, self.float_sums = block, sum_len, float_sums
        self.order = (run, runs)
        places = tuple(int(v) for v in np.argsort(runs or (0,)))  # where each run is stored
        # vector(x) -> (q, d, s): __call__ unchecked, for a C-contiguous float32 vector
        # whose length is a multiple of the block (a product's hot path)
        self.vector, self._rows = _kernels(block, sum_len, run, places, float_sums)

    def __call__(self, x: np.ndarray) -> Q8:
        """x, a vector whose length is a multiple of the block, quantized."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 1 or x.size % self.block:
            raise ValueError(f"need a vector whose length is a multiple of {self.block}, "
                             f"got {x.shape}")
        return Q8(*self.vector(x), self.order)

    def rows(self, x: np.ndarray, first: np.ndarray, stride: np.ndarray, unit: int,
             q: np.ndarray):
        """The rows of x (n, cols), C-contiguous float32, quantized in parallel into q
        (int8), then zero rows up to len(first). Laid out for the GEMM's tiles in units
        of `unit` values (a multiple of the block that divides cols, and of the span the
        values move in): unit k of row t goes to unit first[t] + k stride[t]. Returns
        (q, d, s)."""
        run, runs = self.order
        if unit % (max(len(runs), 1) * run):
            raise ValueError(f"units of {unit} values would split spans that move")
        d = np.empty(q.size // self.block, np.float32)
        s = np.empty(q.size // self.sum_len, np.float32 if self.float_sums else np.int16)
        self._rows(x, q, d, s, first, stride, unit // self.block)
        return q, d, s


# Q8_0's sums are float32: the kernels subtract them in float
quantize_q8_0 = Quantizer(32, 32, float_sums=True)
# Q8_0 for Q4_0's and Q4_1's matvec, which read blocks k and k + 4 of eight together:
# their low nibbles (values 0-15 of each), then their high ones (16-31)
quantize_q8_0_pairs = Quantizer(32, 32, float_sums=True, run=16, runs=side_by_side(8))
quantize_q8_k = Quantizer(256, 16, float_sums=False)
# Q8_K in the orders of the K-quants' bit fields, so that a 512-bit load and one mask (or
# one shift) give two 32-weight chunks whose activations lie side by side: 64 bytes of
# Q4_K's and Q5_K's nibbles hold chunks 0 and 2 in their low nibbles, 1 and 3 in their
# high ones; 64 bytes of Q2_K's and Q3_K's 2-bit fields hold chunks 0 and 4 in their
# lowest bits, 1 and 5 in the next two, and so on
NIBBLE_CHUNKS = side_by_side(2, 8)
CRUMB_CHUNKS = side_by_side(4)
quantize_q8_k_nibbles = Quantizer(256, 16, float_sums=False, runs=side_by_side(2))
quantize_q8_k_crumbs = Quantizer(256, 16, float_sums=False, runs=CRUMB_CHUNKS)
# Q8_K for gemm's Q4_K and Q5_K tiles, which split those chunks once more, into the
# first 16 weights of chunks 0, 2, 1, 3, then their second 16 (simd.chain_lanes)
quantize_q8_k_halves = Quantizer(256, 16, float_sums=False, run=16,
                                 runs=(0, 4, 2, 6, 1, 5, 3, 7))
