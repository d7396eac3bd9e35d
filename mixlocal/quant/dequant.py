"""Numba dequantization: block bytes, where they lie, to float32 rows.

One `dequant_row_<format>(src, dst)` per format decodes one row (`src`: its uint8
blocks, `dst`: float32 of the row's length). `dequant_row` picks one by its GGML type
number, and `row_kernels` builds the drivers (runs of rows, gathered rows) per type.
Layouts follow gguf-py's quants.py, and each kernel repeats its float32 operations in
the same order, so results match it bit for bit.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ..ggml_types import GGMLType as QT
# Type numbers as plain ints: Numba freezes these globals into the kernels.
F32, F16, BF16 = int(QT.F32), int(QT.F16), int(QT.BF16)
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = (int(QT.Q4_0), int(QT.Q4_1), int(QT.Q5_0),
                                int(QT.Q5_1), int(QT.Q8_0))
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = (int(QT.Q2_K), int(QT.Q3_K), int(QT.Q4_K),
                                int(QT.Q5_K), int(QT.Q6_K))


@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret a uint32 as float32 (there is no scalar .view in nopython mode)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@intrinsic
def _hidden(typingctx, n):
    """n, hidden from LLVM's constant folding (an empty inline asm passes it through).

    LLVM fully unrolls a loop of a known short count, then leaves it scalar (it cannot
    rule out that src and dst overlap). A loop of unknown count reaches the loop
    vectorizer instead, which checks for overlap at run time: 3x faster kernels here.
    """
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64)])
        return builder.asm(fnty, "", "=r,0", [args[0]], side_effect=False)
    return types.int64(types.int64), codegen


@intrinsic
def _to_f32(typingctx, q):
    """A small integer (|q| < 2**31) as float32, converted from 32 bits.

    Numba widens integer arithmetic to 64 bits; converting from a 32-bit truncation
    lets LLVM keep the vector lanes 32 bits wide (1.7x faster decoding).
    """
    def codegen(context, builder, signature, args):
        v, i32 = args[0], ir.IntType(32)
        if v.type.width > 32:
            v = builder.trunc(v, i32)
        elif v.type.width < 32:
            v = builder.sext(v, i32) if q.signed else builder.zext(v, i32)
        return builder.sitofp(v, ir.FloatType())
    return types.float32(q), codegen


_TWO_112 = np.float32(2.0 ** 112)  # rebiases f16's exponent (15) to f32's (127)


@njit(cache=True, inline="always")
def f16_to_f32(h):
    """Exact IEEE half -> float32 from the 16 bits, subnormals, inf and nan included."""
    bits = np.uint32((h & 0x7FFF) << 13)
    f = _f32_from_bits(bits) * _TWO_112  # scaling also normalises f16 subnormals
    if bits >= 0x0F800000:  # exponent 31: inf or nan
        f = _f32_from_bits(np.uint32(bits | 0x7F800000))
    return -f if h & 0x8000 else f


@njit(cache=True, inline="always")
def _u16(src, o):
    return np.uint32(src[o]) | (np.uint32(src[o + 1]) << 8)


@njit(cache=True, inline="always")
def _u32(src, o):
    return _u16(src, o) | (_u16(src, o + 2) << 16)


@njit(cache=True, inline="always")
def _f16(src, o):
    return f16_to_f32(_u16(src, o))


@njit(cache=True, inline="always")
def _i8(b):
    """A uint8 byte read as int8."""
    return np.int32(b) - ((np.int32(b) & 0x80) << 1)


# -- float rows --------------------------------------------------------------------

@njit(cache=True)
def dequant_row_f32(src, dst):
    for j in range(dst.size):
        dst[j] = _f32_from_bits(_u32(src, 4 * j))


@njit(cache=True)
def dequant_row_f16(src, dst):
    for j in range(dst.size):
        dst[j] = _f16(src, 2 * j)


@njit(cache=True)
def dequant_row_bf16(src, dst):
    for j in range(dst.size):
        dst[j] = _f32_from_bits(_u16(src, 2 * j) << 16)


# -- 32-weight blocks: f16 d [, f16 m] [, 32 fifth bits], 16 bytes of nibbles --------

@njit(cache=True, inline="always")
def _row_32(src, dst, nbytes, has_min, has_high):
    """w = d * (q - offset) [+ m]; q = nibble [| fifth bit << 4]."""
    offset = 0 if has_min else (16 if has_high else 8)
    o_qh = 4 if has_min else 2
    o_qs = o_qh + (4 if has_high else 0)
    for blk in range(dst.size // 32):
        o = blk * nbytes
        k = blk * 32
        d = _f16(src, o)
        m = _f16(src, o + 2) if has_min else np.float32(0.0)
        qh = _u32(src, o + o_qh) if has_high else np.uint32(0)
        for j in range(_hidden(16)):
            b = np.int32(src[o + o_qs + j])
            lo = (b & 15) | (np.int32((qh >> j) & 1) << 4)
            hi = (b >> 4) | (np.int32((qh >> (j + 16)) & 1) << 4)
            w_lo = d * _to_f32(lo - offset)
            w_hi = d * _to_f32(hi - offset)
            if has_min:
                w_lo += m
                w_hi += m
            dst[k + j] = w_lo
            dst[k + j + 16] = w_hi


@njit(cache=True)
def dequant_row_q4_0(src, dst):
    _row_32(src, dst, 18, False, False)


@njit(cache=True)
def dequant_row_q4_1(src, dst):
    _row_32(src, dst, 20, True, False)


@njit(cache=True)
def dequant_row_q5_0(src, dst):
    _row_32(src, dst, 22, False, True)


@njit(cache=True)
def dequant_row_q5_1(src, dst):
    _row_32(src, dst, 24, True, True)


@njit(cache=True)
def dequant_row_q8_0(src, dst):
    for blk in range(dst.size // 32):
        o = blk * 34
        d = _f16(src, o)
        for j in range(_hidden(32)):
            dst[blk * 32 + j] = _to_f32(_i8(src[o + 2 + j])) * d


# -- K-quants: 256-weight super-blocks ----------------------------------------------

# Q2_K, Q3_K and Q6_K: 16 sub-blocks of 16 weights with a scale each. Each half h of
# the block is decoded by one loop over l < 32 that reads byte l of the half's 2-bit
# planes and writes weights 32 * s + l for each bit pair s; sub-block 2 * s + (l >> 4).

@njit(cache=True, inline="always")
def _pick(l, a, b):
    """a for the first 16 of 32 lanes, b for the rest (a vector select)."""
    return a if l < 16 else b


@njit(cache=True)
def dequant_row_q2_k(src, dst):
    # scales[16] (low nibble: scale, high: min), qs[64] of 2-bit values, f16 d, dmin
    for blk in range(dst.size // 256):
        o = blk * 84
        d = _f16(src, o + 80)
        dmin = _f16(src, o + 82)
        for h in range(2):
            for s in range(4):
                sc_a = np.int32(src[o + 8 * h + 2 * s])
                sc_b = np.int32(src[o + 8 * h + 2 * s + 1])
                dl_a, ml_a = d * _to_f32(sc_a & 15), dmin * _to_f32(sc_a >> 4)
                dl_b, ml_b = d * _to_f32(sc_b & 15), dmin * _to_f32(sc_b >> 4)
                out = blk * 256 + h * 128 + s * 32
                for l in range(_hidden(32)):
                    q = (np.int32(src[o + 16 + 32 * h + l]) >> (2 * s)) & 3
                    dst[out + l] = _pick(l, dl_a, dl_b) * _to_f32(q) - _pick(l, ml_a, ml_b)


@njit(cache=True, inline="always")
def _scale_q3_k(src, o, i):
    """Signed 6-bit scale i of 16: 4 low bits from bytes 0-7, 2 high bits from 8-11."""
    lo = (np.int32(src[o + (i & 7)]) >> (4 * (i >> 3))) & 15
    hi = (np.int32(src[o + 8 + (i & 3)]) >> (2 * (i >> 2))) & 3
    return (lo | (hi << 4)) - 32


@njit(cache=True)
def dequant_row_q3_k(src, dst):
    # hmask[32] (third bit; clear means -4), qs[64] 2-bit, scales[12], f16 d
    for blk in range(dst.size // 256):
        o = blk * 110
        d = _f16(src, o + 108)
        for h in range(2):
            for s in range(4):
                dl_a = d * _to_f32(_scale_q3_k(src, o + 96, 8 * h + 2 * s))
                dl_b = d * _to_f32(_scale_q3_k(src, o + 96, 8 * h + 2 * s + 1))
                out = blk * 256 + h * 128 + s * 32
                for l in range(_hidden(32)):
                    q = (np.int32(src[o + 32 + 32 * h + l]) >> (2 * s)) & 3
                    q -= (((np.int32(src[o + l]) >> (4 * h + s)) & 1) ^ 1) << 2
                    dst[out + l] = _pick(l, dl_a, dl_b) * _to_f32(q)


@njit(cache=True, inline="always")
def _scale_min_k4(src, o, i):
    """Q4_K/Q5_K: 6-bit scale and min of sub-block i (of 8) from the 12 bytes at o."""
    if i < 4:
        sc = np.int32(src[o + i]) & 63
        m = np.int32(src[o + i + 4]) & 63
    else:
        sc = (np.int32(src[o + i + 4]) & 15) | ((np.int32(src[o + i - 4]) >> 6) << 4)
        m = (np.int32(src[o + i + 4]) >> 4) | ((np.int32(src[o + i]) >> 6) << 4)
    return sc, m


@njit(cache=True, inline="always")
def _row_q45_k(src, dst, nbytes, has_high):
    # f16 d, f16 dmin, scales[12], [qh[32] fifth bits,] qs[128]: w = d*sc*q - dmin*m.
    # Byte l of nibble run c holds weight l of sub-blocks 2c (low) and 2c+1 (high);
    # their fifth bits are bits 2c and 2c+1 of qh[l].
    o_qs = 48 if has_high else 16
    for blk in range(dst.size // 256):
        o = blk * nbytes
        d = _f16(src, o)
        dmin = _f16(src, o + 2)
        for c in range(4):
            sc, m = _scale_min_k4(src, o + 4, 2 * c)
            dl_a, ml_a = d * _to_f32(sc), dmin * _to_f32(m)
            sc, m = _scale_min_k4(src, o + 4, 2 * c + 1)
            dl_b, ml_b = d * _to_f32(sc), dmin * _to_f32(m)
            out = blk * 256 + c * 64
            for l in range(_hidden(32)):
                b = np.int32(src[o + o_qs + 32 * c + l])
                q_a, q_b = b & 15, b >> 4
                if has_high:
                    h = np.int32(src[o + 16 + l]) >> (2 * c)
                    q_a |= (h & 1) << 4
                    q_b |= (h & 2) << 3
                dst[out + l] = dl_a * _to_f32(q_a) - ml_a
                dst[out + 32 + l] = dl_b * _to_f32(q_b) - ml_b


@njit(cache=True)
def dequant_row_q4_k(src, dst):
    _row_q45_k(src, dst, 144, False)


@njit(cache=True)
def dequant_row_q5_k(src, dst):
    _row_q45_k(src, dst, 176, True)


@njit(cache=True)
def dequant_row_q6_k(src, dst):
    # ql[128] low 4 bits, qh[64] high 2 bits, scales[16] int8, f16 d: w = d*sc*(q - 32).
    # Bit pair s of qh byte l goes with nibble s >> 1 (low, then high) of ql byte
    # l + 32 * (s & 1): ql has 64 bytes per half, qh 32.
    for blk in range(dst.size // 256):
        o = blk * 210
        d = _f16(src, o + 208)
        for h in range(2):
            for s in range(4):
                dl_a = d * _to_f32(_i8(src[o + 192 + 8 * h + 2 * s]))
                dl_b = d * _to_f32(_i8(src[o + 192 + 8 * h + 2 * s + 1]))
                o_lo = o + 64 * h + 32 * (s & 1)
                out = blk * 256 + h * 128 + s * 32
                for l in range(_hidden(32)):
                    lo = (np.int32(src[o_lo + l]) >> (4 * (s >> 1))) & 15
                    hi = (np.int32(src[o + 128 + 32 * h + l]) >> (2 * s)) & 3
                    dst[out + l] = _pick(l, dl_a, dl_b) * _to_f32((lo | (hi << 4)) - 32)


# -- dispatch and drivers -----------------------------------------------------------

# GGML type number -> its row decoder
DECODERS = {Q4_K: dequant_row_q4_k, Q6_K: dequant_row_q6_k, Q8_0: dequant_row_q8_0,
            Q5_K: dequant_row_q5_k, Q4_0: dequant_row_q4_0, Q3_K: dequant_row_q3_k,
            Q2_K: dequant_row_q2_k, Q5_0: dequant_row_q5_0, Q4_1: dequant_row_q4_1,
            Q5_1: dequant_row_q5_1, F32: dequant_row_f32, F16: dequant_row_f16,
            BF16: dequant_row_bf16}


def dequant_row(qtype, src, dst):
    """Decode one row of type `qtype` (a GGML type number), for jitted callers, with
    qtype a constant of theirs: each compiles its own type's decoder alone (a branch
    over every type compiled all thirteen: 8 s of SmolLM2's first run, 37 s)."""


@overload(dequant_row, prefer_literal=True)
def _dequant_row_impl(qtype, src, dst):
    if not isinstance(qtype, types.IntegerLiteral):
        return None  # Numba retries with the literal
    decode = DECODERS[qtype.literal_value]
    return lambda qtype, src, dst: decode(src, dst)


@cache
def row_kernels(qtype: int):
    """(rows(data, out), gather(data, ids, out)) for one type, compiled on first use:
    out[r] = row r of `data` (uint8 (rows, row_bytes)) as float32, and out[i] = row
    ids[i] of it (an embedding lookup). Serial and GIL-free: callers split the rows
    over threads (see threads.py)."""
    @njit(cache=True, nogil=True)
    def rows(data, out):
        for r in range(data.shape[0]):
            dequant_row(qtype, data[r], out[r])

    @njit(cache=True, nogil=True)
    def gather(data, ids, out):
        for i in range(ids.size):
            dequant_row(qtype, data[ids[i]], out[i])
    return rows, gather
