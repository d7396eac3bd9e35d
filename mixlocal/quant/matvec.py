"""SIMD matrix-vector products on 8-bit activations: llama.cpp's method, in Numba.

The activation vector is quantized once (q8.py); each weight block then meets its
activation block in an integer dot product (simd.dpbusd: AVX512-VNNI or AVX2), scaled
by both block scales into float32 accumulators. Weight offsets and minimums use the
activation sums, so the inner loop stays integer.

One block function per format, `_q4_0` ... `_q6_k`, has the same shape:
    (path, acc, corr, w, o, xq, xd, xs, b) -> (acc, corr)
where o is the byte offset of weight block b, acc an f32x8 accumulator and corr a
float32 accumulator for the terms that do not depend on the weights' low bits. One
row loop (`_row_kernel`) serves every format and path; it is compiled per (format,
path) from a closure over those strings (and the block size), which also keys Numba's
cache. Numba checks only this file's date for that cache: after editing simd.py or
q8.py alone, clear mixlocal/quant/__pycache__.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from gguf.constants import GGMLQuantizationType as QT
from numba import njit, prange, types
from numba.extending import overload

from .formats import type_size
from .q8 import Q8, quantize_q8_0, quantize_q8_k
from .simd import (at, bit_bytes, bytes_i16, dot_i8, dpbusd, dpwssd, f16_at, f16_times, fadd,
                   fma, fma_less, hsum, load_i16x16, load_nibbles, load_u8x32, maddubs, or_shl,
                   pick2, prefetch_nta, shr_and, spread_pairs, u32_at, zeros_f32, zeros_i32)

_inline = njit(cache=True, forceinline=True)  # LLVM alwaysinline: one loop body


# --- 32-weight formats, with Q8_0 activations (xs: float32 sum per block) ------------
# An offset k on the weights, (q - k) . a = q . a - k sum(a), takes k sum(a) / 8 off
# each of the 8 lanes of q . a before scaling (fma_less): one vector subtraction.

@_inline
def _q4_0(path, acc, corr, w, o, xq, xd, xs, b):  # f16 d, 16 B nibbles; w = d (q - 8)
    p = dpbusd(path, zeros_i32(), load_nibbles(w, o + 2), load_u8x32(xq, 32 * b))
    return fma_less(acc, p, at(xs, b), f16_times(w, o, at(xd, b))), corr


@_inline
def _q4_1(path, acc, corr, w, o, xq, xd, xs, b):  # f16 d, f16 m, nibbles; w = d q + m
    p = dpbusd(path, zeros_i32(), load_nibbles(w, o + 4), load_u8x32(xq, 32 * b))
    da = at(xd, b)
    return fma(acc, p, f16_times(w, o, da)), corr + f16_at(w, o + 2) * da * at(xs, b)


@_inline
def _q5_0(path, acc, corr, w, o, xq, xd, xs, b):  # f16 d, u32 fifth bits, nibbles
    q = or_shl(load_nibbles(w, o + 6), bit_bytes(w, o + 2, 1), 4)
    p = dpbusd(path, zeros_i32(), q, load_u8x32(xq, 32 * b))
    return fma_less(acc, p, 2 * at(xs, b), f16_times(w, o, at(xd, b))), corr


@_inline
def _q5_1(path, acc, corr, w, o, xq, xd, xs, b):  # f16 d, f16 m, u32 fifth bits, nibbles
    q = or_shl(load_nibbles(w, o + 8), bit_bytes(w, o + 4, 1), 4)
    p = dpbusd(path, zeros_i32(), q, load_u8x32(xq, 32 * b))
    da = at(xd, b)
    return fma(acc, p, f16_times(w, o, da)), corr + f16_at(w, o + 2) * da * at(xs, b)


@_inline
def _q8_0(path, acc, corr, w, o, xq, xd, xs, b):  # f16 d, 32 int8
    p = dot_i8(path, zeros_i32(), load_u8x32(w, o + 2), load_u8x32(xq, 32 * b))
    return fma(acc, p, f16_times(w, o, at(xd, b))), corr


# --- K-quants: 256-weight super-blocks, with Q8_K activations (xs: sum per 16) -------
# Each 32-weight chunk: pair sums (maddubs), then a multiply-add with the chunk's int16
# scales (pick2 of a 16-lane scale table), into one int32 accumulator per super-block.
# Weight offsets and minimums meet the activation sums in one more multiply-add.

_LOW6, _LOW4, _LOW2 = 0x3F3F3F3F, 0x0F0F0F0F, 0x03030303  # per-byte masks


@_inline
def _chunk(path, isum, q, xq, b, j, sc, s0, s1):
    """isum + chunk j's 32 weights q times their activations, the first 16 scaled by
    sc[s0], the last 16 by sc[s1]."""
    return dpwssd(path, isum, maddubs(q, load_u8x32(xq, 256 * b + 32 * j)), pick2(sc, s0, s1))


@_inline
def _k_total(path, acc, isum, d, xs, b, per16, d16):
    """acc + d isum + d16 (per16 . the activation sums): scaled chunks, then offsets or
    minimums (per16: one int16 factor per 16 activations)."""
    return fma(fma(acc, isum, d), dpwssd(path, zeros_i32(), load_i16x16(xs, 16 * b), per16), d16)


@_inline
def _q45_k(path, acc, w, o, xq, xd, xs, b, qh, qs):
    """Q4_K / Q5_K from byte offsets of the fifth bits qh (-1: none) and nibbles qs:
    f16 d, f16 dmin, 12 B of 6-bit scales and mins; w = d sc q - dmin m per 32."""
    u0, u1, u2 = u32_at(w, o + 4), u32_at(w, o + 8), u32_at(w, o + 12)
    sc = bytes_i16(u0 & _LOW6, (u2 & _LOW4) | (((u0 >> 6) & _LOW2) << 4), 0, 0, 0)
    mn = bytes_i16(u1 & _LOW6, ((u2 >> 4) & _LOW4) | (((u1 >> 6) & _LOW2) << 4), 0, 0, 0)
    isum = zeros_i32()
    for j in range(0, 8, 2):  # 32 bytes of nibbles: chunks j (low) and j + 1 (high)
        v = load_u8x32(w, o + qs + 16 * j)
        lo, hi = shr_and(v, 0, 15), shr_and(v, 4, 15)
        if qh >= 0:
            bits = load_u8x32(w, o + qh)
            lo, hi = or_shl(lo, shr_and(bits, j, 1), 4), or_shl(hi, shr_and(bits, j + 1, 1), 4)
        isum = _chunk(path, isum, lo, xq, b, j, sc, j, j)
        isum = _chunk(path, isum, hi, xq, b, j + 1, sc, j + 1, j + 1)
    da = at(xd, b)
    return _k_total(path, acc, isum, f16_at(w, o) * da, xs, b, spread_pairs(mn),
                    -f16_at(w, o + 2) * da)


@_inline
def _q4_k(path, acc, corr, w, o, xq, xd, xs, b):
    return _q45_k(path, acc, w, o, xq, xd, xs, b, -1, 16), corr


@_inline
def _q5_k(path, acc, corr, w, o, xq, xd, xs, b):
    return _q45_k(path, acc, w, o, xq, xd, xs, b, 16, 48), corr


@_inline
def _q6_k(path, acc, corr, w, o, xq, xd, xs, b):
    """128 B low 4 bits, 64 B high 2 bits, 16 int8 scales, f16 d; w = d sc (q - 32)."""
    sc = bytes_i16(u32_at(w, o + 192), u32_at(w, o + 196), u32_at(w, o + 200),
                   u32_at(w, o + 204), 0)
    isum = zeros_i32()
    for j in range(8):  # 32 weights; half h = j // 4 of the super-block
        h, c = j // 4, j % 4
        lo = shr_and(load_u8x32(w, o + 64 * h + 32 * (c % 2)), 4 * (c // 2), 15)
        q = or_shl(lo, shr_and(load_u8x32(w, o + 128 + 32 * h), 2 * c, 3), 4)
        isum = _chunk(path, isum, q, xq, b, j, sc, 2 * j, 2 * j + 1)
    d = f16_at(w, o + 208) * at(xd, b)
    return _k_total(path, acc, isum, d, xs, b, sc, -32 * d), corr


@_inline
def _q3_k(path, acc, corr, w, o, xq, xd, xs, b):
    """32 B high-bit mask, 64 B low 2 bits, 12 B of 6-bit scales, f16 d;
    w = d (sc - 32) (q - 4)."""
    u0, u1, u2 = u32_at(w, o + 96), u32_at(w, o + 100), u32_at(w, o + 104)
    sc = bytes_i16((u0 & _LOW4) | ((u2 & _LOW2) << 4),
                   (u1 & _LOW4) | (((u2 >> 2) & _LOW2) << 4),
                   ((u0 >> 4) & _LOW4) | (((u2 >> 4) & _LOW2) << 4),
                   ((u1 >> 4) & _LOW4) | (((u2 >> 6) & _LOW2) << 4), 32)
    isum = zeros_i32()
    for j in range(8):
        low = shr_and(load_u8x32(w, o + 32 + 32 * (j // 4)), 2 * (j % 4), 3)
        q = or_shl(low, shr_and(load_u8x32(w, o), j, 1), 2)
        isum = _chunk(path, isum, q, xq, b, j, sc, 2 * j, 2 * j + 1)
    d = f16_at(w, o + 108) * at(xd, b)
    return _k_total(path, acc, isum, d, xs, b, sc, -4 * d), corr


@_inline
def _q2_k(path, acc, corr, w, o, xq, xd, xs, b):
    """16 B of 4-bit scale and min pairs, 64 B of 2-bit weights, f16 d, f16 dmin."""
    u0, u1, u2, u3 = u32_at(w, o), u32_at(w, o + 4), u32_at(w, o + 8), u32_at(w, o + 12)
    sc = bytes_i16(u0 & _LOW4, u1 & _LOW4, u2 & _LOW4, u3 & _LOW4, 0)
    mn = bytes_i16((u0 >> 4) & _LOW4, (u1 >> 4) & _LOW4, (u2 >> 4) & _LOW4,
                   (u3 >> 4) & _LOW4, 0)
    isum = zeros_i32()
    for j in range(8):
        q = shr_and(load_u8x32(w, o + 16 + 32 * (j // 4)), 2 * (j % 4), 3)
        isum = _chunk(path, isum, q, xq, b, j, sc, 2 * j, 2 * j + 1)
    da = at(xd, b)
    return _k_total(path, acc, isum, f16_at(w, o + 80) * da, xs, b, mn,
                    -f16_at(w, o + 82) * da), corr


# --- dispatch --------------------------------------------------------------------------

# format name -> (GGUF type, block function, activation quantizer)
FORMATS = {
    "q4_0": (QT.Q4_0, _q4_0, quantize_q8_0),
    "q4_1": (QT.Q4_1, _q4_1, quantize_q8_0),
    "q5_0": (QT.Q5_0, _q5_0, quantize_q8_0),
    "q5_1": (QT.Q5_1, _q5_1, quantize_q8_0),
    "q8_0": (QT.Q8_0, _q8_0, quantize_q8_0),
    "q2_k": (QT.Q2_K, _q2_k, quantize_q8_k),
    "q3_k": (QT.Q3_K, _q3_k, quantize_q8_k),
    "q4_k": (QT.Q4_K, _q4_k, quantize_q8_k),
    "q5_k": (QT.Q5_K, _q5_k, quantize_q8_k),
    "q6_k": (QT.Q6_K, _q6_k, quantize_q8_k),
}
BY_QTYPE = {qtype: name for name, (qtype, _, _) in FORMATS.items()}


def _block(fmt, path, acc, corr, w, o, xq, xd, xs, b):
    """The block function of format `fmt` (a string literal)."""


@overload(_block, prefer_literal=True, jit_options={"forceinline": True})
def _block_impl(fmt, path, acc, corr, w, o, xq, xd, xs, b):
    if isinstance(fmt, types.StringLiteral):
        fn = FORMATS[fmt.literal_value][1]
        return lambda fmt, path, acc, corr, w, o, xq, xd, xs, b: fn(
            path, acc, corr, w, o, xq, xd, xs, b)
    return None


# Past this many columns the activation (8+ KB) no longer stays in L1 beside the weight
# stream from DRAM, and products slow down by up to 2x; weights prefetched
# non-temporally, PREFETCH_BYTES ahead, leave it there (+20-45% on 16384 columns).
LONG_ROW = 8192
PREFETCH_BYTES = 2048


def _row_kernel(fmt: str, path: str):
    step = type_size(FORMATS[fmt][0])  # bytes per block: a constant in each kernel

    @njit(cache=True, parallel=True)
    def kernel(w, xq, xd, xs, y):
        """y[r] = row r of w . the activation (xq, xd, xs); rows split across threads."""
        nb = xd.size
        long_rows = xq.size > LONG_ROW
        for r in prange(w.shape[0]):
            o = r * w.shape[1]
            acc0, acc1 = zeros_f32(), zeros_f32()  # two chains hide the FMA latency
            c0, c1 = np.float32(0.0), np.float32(0.0)
            for b in range(0, nb - 1, 2):
                if long_rows:
                    for line in range(0, 2 * step, 64):
                        prefetch_nta(w, o + b * step + PREFETCH_BYTES + line)
                acc0, c0 = _block(fmt, path, acc0, c0, w, o + b * step, xq, xd, xs, b)
                acc1, c1 = _block(fmt, path, acc1, c1, w, o + b * step + step, xq, xd, xs, b + 1)
            if nb % 2:
                acc0, c0 = _block(fmt, path, acc0, c0, w, o + (nb - 1) * step, xq, xd, xs, nb - 1)
            y[r] = hsum(fadd(acc0, acc1)) + c0 + c1
    return kernel


@cache
def kernels(path: str) -> dict:
    """{GGUF type: kernel(w, xq, xd, xs, y)} for a SIMD path ("vnni" or "avx2").

    Compiles lazily, per type on first use; call only with a path this CPU has
    (cpu.available_paths()): compiling another aborts the process.
    """
    return {qtype: _row_kernel(name, path) for name, (qtype, _, _) in FORMATS.items()}


def quantize_for(qtype: QT, x: np.ndarray) -> Q8:
    """x quantized the way the kernel for `qtype` reads it."""
    return FORMATS[BY_QTYPE[qtype]][2](x)


def matvec_blocks(path: str, qtype: QT, w: np.ndarray, x: Q8 | np.ndarray,
                  out: np.ndarray | None = None) -> np.ndarray:
    """y = W x for uint8 blocks w (rows, row_bytes), C-contiguous; x float32 or quantized."""
    if not isinstance(x, Q8):
        x = quantize_for(qtype, x)
    y = np.empty(w.shape[0], np.float32) if out is None else out
    kernels(path)[qtype](w, x.q, x.d, x.s, y)
    return y


def matvec_multi(path: str, weights, x: np.ndarray) -> list[np.ndarray]:
    """[W x for (qtype, blocks) in weights], quantizing x once per activation kind."""
    quantized = {}
    out = []
    for qtype, w in weights:
        quantize = FORMATS[BY_QTYPE[qtype]][2]
        if quantize not in quantized:
            quantized[quantize] = quantize(x)
        out.append(matvec_blocks(path, qtype, w, quantized[quantize]))
    return out
