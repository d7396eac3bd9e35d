"""8-bit quantization of the activation vector, once per matrix-vector product.

The integer kernels multiply weight blocks with activation blocks of the same length:
Q8_0 style (32 values per float32 scale) for the 32-weight formats, Q8_K style (256
values per scale) for the K-quants. Values lie in [-127, 127]: the AVX2 kernels rely
on it (their int16 pair sums must not saturate). Each kind also carries the sums of
its values, per block for Q8_0 and per 16 values for Q8_K (llama.cpp's bsums), which
the kernels use for weight offsets and minimums.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit


class Q8(NamedTuple):
    q: np.ndarray  # int8 (n,)
    d: np.ndarray  # float32 (n // block,): value i is q[i] * d[i // block]
    s: np.ndarray  # sums of q: float32 per block (Q8_0), int16 per 16 values (Q8_K)

    def dequantize(self) -> np.ndarray:
        """The float32 vector these bytes stand for."""
        block = self.q.size // self.d.size
        return (self.q.reshape(-1, block) * self.d[:, None]).reshape(-1)


@njit(cache=True)
def _quantize(x, block, sum_len):
    # allocated here: Numba aligns arrays to 32 bytes, where numpy's large ones sit 16
    # bytes past a page and split vector loads across cache lines (matvec 1.1x slower)
    n = x.size
    q = np.empty(n, np.int8)
    d = np.empty(n // block, np.float32)
    s = np.empty(n // sum_len, np.int16)  # |sum| <= 32 * 127
    for b in range(n // block):
        amax = np.float32(0.0)
        for i in range(b * block, (b + 1) * block):
            amax = max(amax, abs(x[i]))
        scale = amax / np.float32(127.0)
        inv = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
        d[b] = scale
        for g in range(b * block // sum_len, (b + 1) * block // sum_len):
            total = 0  # a local sum, not s[g]: 1.6x faster
            for i in range(g * sum_len, (g + 1) * sum_len):
                v = np.int8(np.rint(x[i] * inv))
                q[i] = v
                total += v
            s[g] = total
    return q, d, s


def _check(x: np.ndarray, block: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 1 or x.size % block:
        raise ValueError(f"need a vector whose length is a multiple of {block}, got {x.shape}")
    return x


def quantize_q8_0(x: np.ndarray) -> Q8:
    """Blocks of 32: int8 values, a float32 scale and the sum per block, as float32
    (the kernels subtract it in float)."""
    q, d, s = _quantize(_check(x, 32), 32, 32)
    return Q8(q, d, s.astype(np.float32))


def quantize_q8_k(x: np.ndarray) -> Q8:
    """Blocks of 256: int8 values, a float32 scale per block, sums per 16 values."""
    return Q8(*_quantize(_check(x, 256), 256, 16))
