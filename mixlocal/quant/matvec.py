"""SIMD matrix-vector products on 8-bit activations: llama.cpp's method, in Numba.

The activation vector is quantized once (q8.py); each weight block then meets its
activation block in an integer dot product (simd.dpbusd: AVX512-VNNI or AVX2), scaled
by both block scales into float32 accumulators. Weight offsets and minimums use the
activation sums, so the inner loop stays integer.

One block function per format, `_q4_0` ... `_q6_k`, has the same shape:
    (path, acc, corr, w, o, xq, xd, xs, b) -> (acc, corr)
where o is the byte offset of a weight block, b the index of its activation block in
the flat arrays xq, xd, xs (the GEMM passes all its tokens' rows at once), acc an f32x8
accumulator and corr a float32 accumulator for the terms that do not depend on the
weights' low bits. The 32-weight formats also have a group function, eight blocks at
a time (`_GROUPS`). Two row loops serve every format and path, `_grouped_row_kernel`
(group functions, then block functions for a row's last blocks) and `_row_kernel`
(the K-quants' block functions); each is compiled per (format, path) from a closure
over those strings (and the block size), which also keys Numba's cache (and
jit_cache.py drops that cache whenever any source file changes, since a kernel carries
code inlined from others).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ..ggml_types import GGMLType as QT
from .formats import type_size
from .q8 import (CRUMB_CHUNKS, NIBBLE_CHUNKS, Q8, quantize_q8_0, quantize_q8_0_pairs,
                 quantize_q8_k, quantize_q8_k_crumbs, quantize_q8_k_nibbles)
from .simd import (at, bit_bytes, bits_u8x64, block_sums, block_sums_i32,
                   bytes_i16, chunk_order, dot_i8, dot_i8_plus_128, dpbusd, dpwssd,
                   f16_at, f16_times, fadd, fma, fma_less, fmul, group_scales, k4_scales,
                   high_nibble_pair, hsum, load_f32x8, load_i16x16, load_nibbles,
                   load_pair, load_u8x32, low_i32, low_nibble_pair, mul_i16, or_bits, or_shl,
                   prefetch_l2, scaled_pairs, scaled_quad, shr_and, spread_pairs,
                   strided_halves, sum_i32x8, u32_at, VBMI, zero_sum,
                   zeros_f32, zeros_i32)

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


# --- the 32-weight formats eight blocks at a time, for matvec -----------------------
# Block by block, the offset, the two scales and the accumulation cost four vector
# instructions per 32 weights, as many as the integer dot product itself. Eight
# blocks' dot products folded into one vector (simd.block_sums) share them instead:
# their eight scales come in by one shuffle, their activation sums in one load
# (1.13x over two blocks at a time, one thread, from DRAM). Blocks k and k + 4 share a
# register, low nibbles then high ones (a mask and a shift, not GFNI), against
# activations quantized in that order (quantize_q8_0_pairs): 1.03-1.10x over a block
# to a register, whose sums took a third round of folding. Q4_1 the same way: 1.7x
# over two blocks at a time from L2 (its minimums had taken scalar arithmetic per
# block), 1.4x from DRAM on a small model's short rows.

GROUP = 8  # blocks per step of a grouped row kernel
_q4_0_scales = strided_halves(18)
_q4_1_heads = strided_halves(20, 2)  # d and m


@_inline
def _nibble_pair(path, w, o, step, k, xq, b, qh=-1):
    """Blocks b + k and b + k + 4 of a group (block b at byte o, `step` bytes a block,
    its last 16 the nibbles; fifth bits in the 32-bit mask at byte qh of each, -1: none)
    times their activations: lanes 0-3 hold the first's partial sums, lanes 4-7 the
    second's."""
    lo, hi = o + step * (k + 1) - 16, o + step * (k + 5) - 16
    low, high = low_nibble_pair(w, lo, hi), high_nibble_pair(w, lo, hi)
    if qh >= 0:  # bit j of a block's mask: its value j's; values 0-15, then 16-31
        first, second = u32_at(w, o + step * k + qh), u32_at(w, o + step * (k + 4) + qh)
        low = or_bits(low, (first & 0xFFFF) | (second << 16), 16)
        high = or_bits(high, (first >> 16) | (second & 0xFFFF0000), 16)
    p = dpbusd(path, zeros_i32(), low, load_u8x32(xq, 32 * b + 64 * k))
    return dpbusd(path, p, high, load_u8x32(xq, 32 * b + 64 * k + 32))


@_inline
def _nibble_sums(path, w, o, step, xq, b):
    """q . a of blocks b..b + 7 (the first at byte o), one block to a lane."""
    return block_sums(_nibble_pair(path, w, o, step, 0, xq, b),
                      _nibble_pair(path, w, o, step, 1, xq, b),
                      _nibble_pair(path, w, o, step, 2, xq, b),
                      _nibble_pair(path, w, o, step, 3, xq, b))


@_inline
def _offset_total(acc, sums, offset, d, xd, xs, b):
    """acc + eight blocks of weights d (q - offset) times their activation blocks b..b + 7,
    from sums = q . a: (q - offset) . a = q . a - offset sum(a)."""
    return fma(acc, fma(sums, load_f32x8(xs, b), -offset), fmul(d, load_f32x8(xd, b)))


@_inline
def _min_total(acc, sums, heads, xd, xs, b):
    """As _offset_total, for weights d q + m (heads: d and m): d (q . a) + m sum(a)."""
    d, m = heads
    return fma(acc, fma(fmul(sums, d), m, load_f32x8(xs, b)), load_f32x8(xd, b))


@_inline
def _q4_0_group(path, acc, w, o, xq, xd, xs, b):
    """acc + blocks b..b + 7 (the first at byte o) times their activation blocks."""
    return _offset_total(acc, _nibble_sums(path, w, o, 18, xq, b), 8.0, _q4_0_scales(w, o),
                         xd, xs, b)


@_inline
def _q4_1_group(path, acc, w, o, xq, xd, xs, b):
    return _min_total(acc, _nibble_sums(path, w, o, 20, xq, b), _q4_1_heads(w, o), xd, xs, b)


# Q5_0 and Q5_1 the same way, their fifth bits from each block's mask
# (simd.or_bits); sums of 5-bit weights outgrow block_sums' int16 lanes, so they fold
# in horizontal int32 adds (block_sums_i32). 1.35x (Q5_0) and 1.2x (Q5_1) over two
# blocks at a time, from L2 or DRAM on one thread.
_q5_0_scales = strided_halves(22)
_q5_1_heads = strided_halves(24, 2)  # d and m


@_inline
def _fifth_bit_sums(path, w, o, step, xq, b):
    """q . a of blocks b..b + 7 (the first at byte o; Q5_0's or Q5_1's layout: their
    mask 4 bytes before the nibbles), one block to a lane."""
    qh = step - 20
    return block_sums_i32(_nibble_pair(path, w, o, step, 0, xq, b, qh),
                          _nibble_pair(path, w, o, step, 1, xq, b, qh),
                          _nibble_pair(path, w, o, step, 2, xq, b, qh),
                          _nibble_pair(path, w, o, step, 3, xq, b, qh))


@_inline
def _q5_0_group(path, acc, w, o, xq, xd, xs, b):
    return _offset_total(acc, _fifth_bit_sums(path, w, o, 22, xq, b), 16.0,
                         _q5_0_scales(w, o), xd, xs, b)


@_inline
def _q5_1_group(path, acc, w, o, xq, xd, xs, b):
    sums = _fifth_bit_sums(path, w, o, 24, xq, b)
    return _min_total(acc, sums, _q5_1_heads(w, o), xd, xs, b)


# Q8_0 the same way, its weights plus 128 as unsigned bytes (simd.dot_i8_plus_128): its
# sums outgrow block_sums' int16 lanes, so they fold in horizontal int32 adds
# (block_sums_i32). 1.4x over two blocks at a time from L1 or L2, 1.27x from DRAM.
q8_0_scales = strided_halves(34)  # the d of eight consecutive Q8_0 blocks


@_inline
def _q8_0_pair(path, w, o, k, xq, b):
    """As _nibble_pair: blocks b + k and b + k + 4, values 0-15 then 16-31 of each."""
    lo, hi = o + 34 * k + 2, o + 34 * (k + 4) + 2
    p = dot_i8_plus_128(path, zeros_i32(), load_pair(w, lo, hi), load_u8x32(xq, 32 * b + 64 * k))
    return dot_i8_plus_128(path, p, load_pair(w, lo + 16, hi + 16),
                           load_u8x32(xq, 32 * b + 64 * k + 32))


@_inline
def _q8_0_group(path, acc, w, o, xq, xd, xs, b):
    """Its sums are of the weights plus 128, unsigned: 128 is their offset."""
    p = block_sums_i32(_q8_0_pair(path, w, o, 0, xq, b), _q8_0_pair(path, w, o, 1, xq, b),
                       _q8_0_pair(path, w, o, 2, xq, b), _q8_0_pair(path, w, o, 3, xq, b))
    return _offset_total(acc, p, 128.0, q8_0_scales(w, o), xd, xs, b)


# --- K-quants: 256-weight super-blocks, with Q8_K activations (xs: sum per 16) -------
# Chunks of 32 weights (on VNNI two to a 512-bit register, see _k_isums): integer dot
# products scaled by the chunks' int16 scales, into two int32 accumulators per
# super-block. Weight offsets and minimums meet the activation sums in one more
# multiply-add.

_LOW6, _LOW4, _LOW2 = 0x3F3F3F3F, 0x0F0F0F0F, 0x03030303  # per-byte masks


@_inline
def _chunks(path, isums, q0, q1, q2, q3, xq, b, j, sc, halves):
    """Chunks j..j + 3 (weights q0..q3) times their activations, 16 weights to each
    scale sc[halves[k]], added to the first of two int32 accumulators; returned
    swapped, so that the two halves of a super-block form independent chains."""
    return isums[1], scaled_quad(path, isums[0], sc, halves, q0, q1, q2, q3, xq,
                                 256 * b + 32 * j)


@_inline
def _halves(j, per_chunk):
    """Indices in the scale table of the 16-weight halves of chunks j..j + 3, for
    per_chunk (1 or 2) scales per chunk."""
    s = per_chunk * j
    h = per_chunk // 2  # step from a chunk's first half to its second
    return (s, s + h, s + per_chunk, s + per_chunk + h, s + 2 * per_chunk,
            s + 2 * per_chunk + h, s + 3 * per_chunk, s + 3 * per_chunk + h)


@_inline
def _k_total(path, acc, isums, d, xs, b, per16, d16, da):
    """acc + da (d (sum of isums) + d16 (per16 . the activation sums)): scaled chunks,
    then minimums (per16: one int16 factor per 16 activations). d and d16 belong to
    the weight block alone, so a GEMM converts them once for all its tokens."""
    mins = dpwssd(path, zeros_i32(), load_i16x16(xs, 16 * b), per16)
    return fma(acc, fma(fmul(sum_i32x8(isums[0], isums[1]), d), mins, d16), da)


@_inline
def _k_offset_total(path, acc, isums, d, xs, b, per16, da):
    """acc + d da (sum of isums + per16 . the activation sums): scaled chunks and
    weight offsets (per16: the scales times the offset) in one integer sum."""
    isum = dpwssd(path, sum_i32x8(isums[0], isums[1]), load_i16x16(xs, 16 * b), per16)
    return fma(acc, isum, d * da)


@_inline
def _k_float_mins(acc, isums, d, mins, xs, b, da):
    """acc + d da (sum of isums) + mins . xs[8b:8b + 8], gemm.py's form: xs holds -da
    times each chunk's activation sum, in float32, and the chunks' minimums dmin m
    (mins), decoded once for a tile's tokens, meet it in one FMA (1.03-1.09x over the
    int16 sums for 64-256 tokens)."""
    acc = fma(acc, sum_i32x8(isums[0], isums[1]), d * da)
    return fma(acc, mins, load_f32x8(xs, 8 * b))


@_inline
def _q45_k(path, fmt, acc, w, o, xq, xd, xs, b, int_sums):
    """Q4_K / Q5_K (fmt): f16 d, f16 dmin, 12 B of 6-bit scales and mins, nibbles (and
    Q5_K's fifth bits); w = d sc q - dmin m per 32."""
    sc, mn = q45_scales(w, o)
    isums = _k_isums(path, fmt, w, o, xq, b, sc)
    if not int_sums:
        return _k_float_mins(acc, isums, f16_at(w, o), fmul(low_i32(mn), f16_at(w, o + 2)),
                             xs, b, at(xd, b))
    return _k_total(path, acc, isums, f16_at(w, o), xs, b, spread_pairs(mn), -f16_at(w, o + 2),
                    at(xd, b))


# Q4_K and Q5_K visit their 32-weight chunks in the order 0, 2, 1, 3, 4, 6, 5, 7 (see
# _q45_pair), their activations quantized in that order (quantize_q8_k_nibbles), and
# their scales and minimums put in it by q45_scales; Q2_K and Q3_K in the order 0, 4,
# 1, 5, 2, 6, 3, 7 (quantize_q8_k_crumbs).
_nibble_order = chunk_order(NIBBLE_CHUNKS, 1)
_k4_scales = k4_scales(NIBBLE_CHUNKS)
_crumb_order = chunk_order(CRUMB_CHUNKS, 2)


@_inline
def _q45_scales_bits(w, o):
    """Q4_K / Q5_K: the 8 six-bit scales, in the chunks' order, and the 8 minimums, in
    x's order (they meet the activation sums), in lanes 0-7 of two i16x16."""
    u0, u1, u2 = u32_at(w, o + 4), u32_at(w, o + 8), u32_at(w, o + 12)
    sc = bytes_i16(u0 & _LOW6, (u2 & _LOW4) | (((u0 >> 6) & _LOW2) << 4), 0, 0, 0)
    mn = bytes_i16(u1 & _LOW6, ((u2 >> 4) & _LOW4) | (((u1 >> 6) & _LOW2) << 4), 0, 0, 0)
    return _nibble_order(sc), mn


@_inline
def _q45_scales_vbmi(w, o):
    """_q45_scales_bits by two vpmultishiftqb (simd.k4_scales): the Q4_K matvec's loop
    105 instructions per two super-blocks where the scalar decode's took 145, 17.6 cycles
    a super-block against 18.7 at best of four alternating runs (Q5_K level)."""
    return _k4_scales(w, o + 4)


q45_scales = _q45_scales_vbmi if VBMI else _q45_scales_bits


@_inline
def _q45_chunk(w, o, qh, qs, j):
    """The chunk visited j-th, c: nibbles of the 32 bytes chunks c - c % 2 (low) and
    c - c % 2 + 1 (high) share, with fifth bit c of each byte at qh."""
    c = NIBBLE_CHUNKS[j]
    q = shr_and(load_u8x32(w, o + qs + 16 * (c - c % 2)), 4 * (c % 2), 15)
    if qh >= 0:
        q = or_shl(q, shr_and(load_u8x32(w, o + qh), c, 1), 4)
    return q


@_inline
def _q4_k(path, acc, corr, w, o, xq, xd, xs, b):
    return _q45_k(path, "q4_k", acc, w, o, xq, xd, xs, b, True), corr


@_inline
def _q5_k(path, acc, corr, w, o, xq, xd, xs, b):
    return _q45_k(path, "q5_k", acc, w, o, xq, xd, xs, b, True), corr


@_inline
def _q4_k_fsums(path, acc, corr, w, o, xq, xd, xs, b):
    return _q45_k(path, "q4_k", acc, w, o, xq, xd, xs, b, False), corr


@_inline
def _q5_k_fsums(path, acc, corr, w, o, xq, xd, xs, b):
    return _q45_k(path, "q5_k", acc, w, o, xq, xd, xs, b, False), corr


@_inline
def _q6_k(path, acc, corr, w, o, xq, xd, xs, b):
    """128 B low 4 bits, 64 B high 2 bits, 16 int8 scales, f16 d; w = d sc (q - 32)."""
    sc = q6_scales(w, o)
    isums = _k_isums(path, "q6_k", w, o, xq, b, sc)
    return _k_offset_total(path, acc, isums, f16_at(w, o + 208), xs, b, mul_i16(sc, -32),
                           at(xd, b)), corr


@_inline
def q6_scales(w, o):
    """Q6_K: the 16 int8 scales, one per 16 weights."""
    return bytes_i16(u32_at(w, o + 192), u32_at(w, o + 196), u32_at(w, o + 200),
                     u32_at(w, o + 204), 0)


@_inline
def _q6_chunk(w, o, j):
    h, c = j // 4, j % 4
    lo = shr_and(load_u8x32(w, o + 64 * h + 32 * (c % 2)), 4 * (c // 2), 15)
    return or_shl(lo, shr_and(load_u8x32(w, o + 128 + 32 * h), 2 * c, 3), 4)


@_inline
def _q3_k(path, acc, corr, w, o, xq, xd, xs, b):
    """32 B high-bit mask, 64 B low 2 bits, 12 B of 6-bit scales, f16 d;
    w = d (sc - 32) (q - 4)."""
    sc, in_x_order = q3_scales(w, o)
    isums = _k_isums(path, "q3_k", w, o, xq, b, sc)
    return _k_offset_total(path, acc, isums, f16_at(w, o + 108), xs, b,
                           mul_i16(in_x_order, -4), at(xd, b)), corr


@_inline
def q3_scales(w, o):
    """Q3_K: the 16 six-bit scales, one per 16 weights, less their offset 32, in the
    chunks' order, and in x's order (for the offsets, which meet the activation sums)."""
    u0, u1, u2 = u32_at(w, o + 96), u32_at(w, o + 100), u32_at(w, o + 104)
    sc = bytes_i16((u0 & _LOW4) | ((u2 & _LOW2) << 4),
                   (u1 & _LOW4) | (((u2 >> 2) & _LOW2) << 4),
                   ((u0 >> 4) & _LOW4) | (((u2 >> 4) & _LOW2) << 4),
                   ((u1 >> 4) & _LOW4) | (((u2 >> 6) & _LOW2) << 4), 32)
    return _crumb_order(sc), sc


@_inline
def _q3_chunk(w, o, j):
    """The chunk visited j-th, c: two low bits from the 32 bytes at 32 + 32 (c // 4),
    the third from bit c of the mask at 0."""
    c = CRUMB_CHUNKS[j]
    low = shr_and(load_u8x32(w, o + 32 + 32 * (c // 4)), 2 * (c % 4), 3)
    return or_shl(low, shr_and(load_u8x32(w, o), c, 1), 2)


@_inline
def _q2_k(path, acc, corr, w, o, xq, xd, xs, b):
    """16 B of 4-bit scale and min pairs, 64 B of 2-bit weights, f16 d, f16 dmin."""
    sc, mn = q2_scales(w, o)
    isums = _k_isums(path, "q2_k", w, o, xq, b, sc)
    return _k_total(path, acc, isums, f16_at(w, o + 80), xs, b, mn, -f16_at(w, o + 82),
                    at(xd, b)), corr


@_inline
def q2_scales(w, o):
    """Q2_K: the 16 four-bit scales, in the chunks' order, and the 16 minimums, in x's
    order, one each per 16 weights."""
    u0, u1, u2, u3 = u32_at(w, o), u32_at(w, o + 4), u32_at(w, o + 8), u32_at(w, o + 12)
    return (_crumb_order(bytes_i16(u0 & _LOW4, u1 & _LOW4, u2 & _LOW4, u3 & _LOW4, 0)),
            bytes_i16((u0 >> 4) & _LOW4, (u1 >> 4) & _LOW4, (u2 >> 4) & _LOW4,
                      (u3 >> 4) & _LOW4, 0))


@_inline
def _q2_chunk(w, o, j):
    """The chunk visited j-th, c: two bits of the 32 bytes at 16 + 32 (c // 4)."""
    c = CRUMB_CHUNKS[j]
    return shr_and(load_u8x32(w, o + 16 + 32 * (c // 4)), 2 * (c % 4), 3)


# --- K-quant super-blocks as four pairs of chunks in 512-bit registers (vnni) ----------
# Two chunks' bits come from one load (64 bytes, or 32 twice), each half shifted as its
# chunk needs (simd.bits_u8x64), and a
# super-block's sixteen group scales go in with two 512-bit multiply-adds
# (simd.scaled_pairs): 1.04-1.13x over the 256-bit chunks on Q2_K, Q3_K and Q4_K. gemm.py
# decodes a super-block this way once for a tile of tokens.

@_inline
def _q45_pair(w, o, qh, qs, k):
    """Q4_K / Q5_K chunks c and c + 2, c = 4 (k // 2) + k % 2: the low (k even) or high
    nibbles of the 64 bytes at qs + 64 (k // 2), with their fifth bits c and c + 2 at qh
    (-1: none)."""
    a, s, c = o + qs + 64 * (k // 2), 4 * (k % 2), 4 * (k // 2) + k % 2
    q = bits_u8x64(w, a, a + 32, s, s, 15)
    if qh >= 0:
        q = or_shl(q, bits_u8x64(w, o + qh, o + qh, c, c + 2, 1), 4)
    return q


@_inline
def _q6_pair(w, o, k):
    h, c = k // 2, k % 2
    low = bits_u8x64(w, o + 64 * h, o + 64 * h + 32, 4 * c, 4 * c, 15)
    return or_shl(low, bits_u8x64(w, o + 128 + 32 * h, o + 128 + 32 * h, 4 * c, 4 * c + 2, 3), 4)


@_inline
def _q3_pair(w, o, k):
    """Q3_K chunks k and k + 4: as Q2_K's, with their third bits k and k + 4 from the
    mask at 0."""
    return or_shl(_q2_crumbs(w, o + 32, k), bits_u8x64(w, o, o, k, k + 4, 1), 2)


@_inline
def _q2_pair(w, o, k):
    """Q2_K chunks k and k + 4: bits 2k and 2k + 1 of the 64 bytes at 16."""
    return _q2_crumbs(w, o + 16, k)


@_inline
def _q2_crumbs(w, a, k):
    """Bits 2k and 2k + 1 of the 64 bytes at a: chunk k (of the first 128 weights),
    then chunk k + 4."""
    return bits_u8x64(w, a, a + 32, 2 * k, 2 * k, 3)


@_inline
def _q45_pairs(w, o, qh, qs):
    return (_q45_pair(w, o, qh, qs, 0), _q45_pair(w, o, qh, qs, 1),
            _q45_pair(w, o, qh, qs, 2), _q45_pair(w, o, qh, qs, 3))


@_inline
def q6_pairs(w, o):
    return _q6_pair(w, o, 0), _q6_pair(w, o, 1), _q6_pair(w, o, 2), _q6_pair(w, o, 3)


@_inline
def q3_pairs(w, o):
    return _q3_pair(w, o, 0), _q3_pair(w, o, 1), _q3_pair(w, o, 2), _q3_pair(w, o, 3)


@_inline
def q2_pairs(w, o):
    return _q2_pair(w, o, 0), _q2_pair(w, o, 1), _q2_pair(w, o, 2), _q2_pair(w, o, 3)


@_inline
def pair_sums(pairs, low, high, xq, b):
    """A super-block's chunk pairs times activation block b, scaled by the group scales
    low (groups 0-7) and high (8-15) of simd.group_scales: matvec's two int32
    accumulators (the second zero)."""
    q0, q1, q2, q3 = pairs
    isum = scaled_pairs(zero_sum("vnni"), q0, q1, xq, 256 * b, low)
    return scaled_pairs(isum, q2, q3, xq, 256 * b + 128, high), zero_sum("vnni")


@_inline
def q4_k_pairs(w, o):
    return _q45_pairs(w, o, -1, 16)


@_inline
def q5_k_pairs(w, o):
    return _q45_pairs(w, o, 16, 48)


@_inline
def _q4_k_chunk(w, o, j):
    return _q45_chunk(w, o, -1, 16, j)


@_inline
def _q5_k_chunk(w, o, j):
    return _q45_chunk(w, o, 16, 48, j)


# format -> (pairs, chunk, scales per chunk: 1 for 32-weight scales, 2 for 16)
_K_LAYOUTS = {"q2_k": (q2_pairs, _q2_chunk, 2), "q3_k": (q3_pairs, _q3_chunk, 2),
              "q4_k": (q4_k_pairs, _q4_k_chunk, 1), "q5_k": (q5_k_pairs, _q5_k_chunk, 1),
              "q6_k": (q6_pairs, _q6_chunk, 2)}


def _k_isums(path, fmt, w, o, xq, b, sc):
    """The scaled chunks of the super-block at byte o times activation block b, as two
    int32 accumulators (sc: i16x16 scales; path and fmt: string literals)."""


@overload(_k_isums, prefer_literal=True, jit_options={"forceinline": True})
def _k_isums_impl(path, fmt, w, o, xq, b, sc):
    if not (isinstance(path, types.StringLiteral) and isinstance(fmt, types.StringLiteral)):
        return None
    pairs, chunk, per_chunk = _K_LAYOUTS[fmt.literal_value]
    if path.literal_value == "vnni":
        def vnni(path, fmt, w, o, xq, b, sc):
            per16 = spread_pairs(sc) if per_chunk == 1 else sc
            return pair_sums(pairs(w, o), group_scales(per16, 0), group_scales(per16, 8), xq, b)
        return vnni

    def chunks(path, fmt, w, o, xq, b, sc):
        isums = (zero_sum(path), zero_sum(path))
        for j in (0, 4):
            isums = _chunks(path, isums, chunk(w, o, j), chunk(w, o, j + 1), chunk(w, o, j + 2),
                            chunk(w, o, j + 3), xq, b, j, sc, _halves(j, per_chunk))
        return isums
    return chunks


# --- dispatch --------------------------------------------------------------------------

# format name -> (GGUF type, block function, activation quantizer)
FORMATS = {
    "q4_0": (QT.Q4_0, _q4_0, quantize_q8_0),
    "q4_1": (QT.Q4_1, _q4_1, quantize_q8_0),
    "q5_0": (QT.Q5_0, _q5_0, quantize_q8_0),
    "q5_1": (QT.Q5_1, _q5_1, quantize_q8_0),
    "q8_0": (QT.Q8_0, _q8_0, quantize_q8_0),
    "q2_k": (QT.Q2_K, _q2_k, quantize_q8_k_crumbs),
    "q3_k": (QT.Q3_K, _q3_k, quantize_q8_k_crumbs),
    "q4_k": (QT.Q4_K, _q4_k, quantize_q8_k_nibbles),
    "q5_k": (QT.Q5_K, _q5_k, quantize_q8_k_nibbles),
    "q6_k": (QT.Q6_K, _q6_k, quantize_q8_k),
}
BY_QTYPE = {qtype: name for name, (qtype, _, _) in FORMATS.items()}


# Block functions for gemm.py whose minimums meet activation sums in float32, per
# 32-weight chunk and already times -da (xs: (tokens, 8 per super-block)).
FLOAT_SUMS = {"q4_k": _q4_k_fsums, "q5_k": _q5_k_fsums}
_BLOCKS = {**{name: fn for name, (_, fn, _) in FORMATS.items()},
           **{name + "_fsums": fn for name, fn in FLOAT_SUMS.items()}}


def _block(fmt, path, acc, corr, w, o, xq, xd, xs, b):
    """The block function of format `fmt` (a string literal: a FORMATS name, or a
    FLOAT_SUMS one + "_fsums")."""


@overload(_block, prefer_literal=True, jit_options={"forceinline": True})
def _block_impl(fmt, path, acc, corr, w, o, xq, xd, xs, b):
    if isinstance(fmt, types.StringLiteral):
        fn = _BLOCKS[fmt.literal_value]
        return lambda fmt, path, acc, corr, w, o, xq, xd, xs, b: fn(
            path, acc, corr, w, o, xq, xd, xs, b)
    return None


# Formats whose matvec runs GROUP blocks at a time (the rest: two at a time), and their
# group functions. Each reads blocks k and k + 4 of a group together, against activations
# quantized in that order (quantize_q8_0_pairs); a row's blocks past its last whole group
# go through the format's block function, which reads them as plain Q8_0 does.
_GROUPS = {"q4_0": _q4_0_group, "q4_1": _q4_1_group, "q5_0": _q5_0_group,
           "q5_1": _q5_1_group, "q8_0": _q8_0_group}


def _group(fmt, path, acc, w, o, xq, xd, xs, b):
    """The group function of format `fmt` (a string literal, a _GROUPS name)."""


@overload(_group, prefer_literal=True, jit_options={"forceinline": True})
def _group_impl(fmt, path, acc, w, o, xq, xd, xs, b):
    if isinstance(fmt, types.StringLiteral):
        fn = _GROUPS[fmt.literal_value]
        return lambda fmt, path, acc, w, o, xq, xd, xs, b: fn(path, acc, w, o, xq, xd, xs, b)
    return None


# On the hardware prefetchers alone one core streams weights from DRAM at 55-75% of its
# read bandwidth; asking for the lines PREFETCH_BYTES ahead, into L2 (not L1, where the
# activation stays), gains 1.2-1.35x on 4096x14336 products (Q4_K 18.0 -> 21.8 GB/s,
# Q6_K 20.5 -> 27.8, of about 30).
PREFETCH_BYTES = 8192


def _row_kernel(fmt: str, path: str, parallel: bool):
    step = type_size(FORMATS[fmt][0])  # bytes per block: a constant in each kernel
    pair = 2 * step
    rows = prange if parallel else range  # in the closure: it keys Numba's cache

    @njit(cache=True, parallel=parallel)
    def kernel(w, xq, xd, xs, y):
        """y[r] = row r of w . the activation (xq, xd, xs); rows split across threads."""
        nb = xd.size
        for r in rows(w.shape[0]):
            o = r * w.shape[1]
            acc0, acc1 = zeros_f32(), zeros_f32()  # two chains hide the FMA latency
            c0, c1 = np.float32(0.0), np.float32(0.0)
            for b in range(0, nb - 1, 2):
                prefetch_l2(w, o + b * step + PREFETCH_BYTES, pair)
                acc0, c0 = _block(fmt, path, acc0, c0, w, o + b * step, xq, xd, xs, b)
                acc1, c1 = _block(fmt, path, acc1, c1, w, o + b * step + step, xq, xd, xs, b + 1)
            if nb % 2:
                acc0, c0 = _block(fmt, path, acc0, c0, w, o + (nb - 1) * step, xq, xd, xs, nb - 1)
            y[r] = hsum(fadd(acc0, acc1)) + c0 + c1
    return kernel


def _grouped_row_kernel(fmt: str, path: str, parallel: bool):
    step = type_size(FORMATS[fmt][0])
    group = GROUP * step
    rows = prange if parallel else range

    @njit(cache=True, parallel=parallel)
    def kernel(w, xq, xd, xs, y):
        """As _row_kernel's, GROUP blocks at a time, then block by block."""
        nb = xd.size
        whole = nb - nb % GROUP
        for r in rows(w.shape[0]):
            o = r * w.shape[1]
            acc, rest, c = zeros_f32(), zeros_f32(), np.float32(0.0)
            for b in range(0, whole, GROUP):
                prefetch_l2(w, o + b * step + PREFETCH_BYTES, group)
                acc = _group(fmt, path, acc, w, o + b * step, xq, xd, xs, b)
            for b in range(whole, nb):
                prefetch_l2(w, o + b * step + PREFETCH_BYTES, step)
                rest, c = _block(fmt, path, rest, c, w, o + b * step, xq, xd, xs, b)
            y[r] = hsum(fadd(acc, rest)) + c
    return kernel


@cache
def kernels(path: str, parallel: bool = True) -> dict:
    """{GGUF type: kernel(w, xq, xd, xs, y)} for a SIMD path ("vnni" or "avx2"), rows
    split across Numba's threads or (parallel False) all on the calling thread.

    Compiles lazily, per type on first use; call only with a path this CPU has
    (cpu.available_paths()): compiling another aborts the process.
    """
    return {qtype: (_grouped_row_kernel if name in _GROUPS else _row_kernel)(name, path,
                                                                             parallel)
            for name, (qtype, _, _) in FORMATS.items()}


def quantizer(qtype: QT):
    """The activation quantizer of the matvec kernel for `qtype`."""
    name = BY_QTYPE[qtype]
    return quantize_q8_0_pairs if name in _GROUPS else FORMATS[name][2]


def quantize_for(qtype: QT, x: np.ndarray) -> Q8:
    """x quantized the way the matvec kernel for `qtype` reads it."""
    return quantizer(qtype)(x)


def times(fmt, path, w, x, parallel):
    """W x for jitted callers (the model's generated tokens): w the blocks (rows,
    row_bytes) of format `fmt` (a FORMATS name), x a C-contiguous float32 vector,
    quantized here as the matvec kernel reads it; rows split across threads if
    `parallel`, else on the calling thread (fmt, path and parallel: literals)."""


@overload(times, prefer_literal=True)
def _times_impl(fmt, path, w, x, parallel):
    if not all(isinstance(a, types.Literal) for a in (fmt, path, parallel)):
        return None
    quantize, kernel = _product(path.literal_value, FORMATS[fmt.literal_value][0],
                                parallel.literal_value)

    def impl(fmt, path, w, x, parallel):
        xq, xd, xs = quantize(x)
        y = np.empty(w.shape[0], np.float32)
        kernel(w, xq, xd, xs, y)
        return y
    return impl


@cache
def _product(path: str, qtype: QT, parallel: bool):
    """(quantize, kernel) of a product by `qtype`: Quantizer.vector, and the kernel,
    looked up once (a small model makes some 200 products a token)."""
    return quantizer(qtype).vector, kernels(path, parallel)[qtype]


def matvec_blocks(path: str, qtype: QT, w: np.ndarray, x: Q8 | np.ndarray,
                  out: np.ndarray | None = None, parallel: bool = True) -> np.ndarray:
    """y = W x for uint8 blocks w (rows, row_bytes), C-contiguous; x quantized, or a
    C-contiguous float32 vector of the rows' length; rows split across Numba's threads
    unless parallel is False."""
    quantize, kernel = _product(path, qtype, parallel)
    q, d, s = x[:3] if isinstance(x, Q8) else quantize(x)
    y = np.empty(w.shape[0], np.float32) if out is None else out
    kernel(w, q, d, s, y)
    return y


def matvec_multi(path: str, weights, x: np.ndarray, parallel: bool = True) -> list[np.ndarray]:
    """[W x for (qtype, blocks) in weights], quantizing x (C-contiguous float32) once per
    activation kind."""
    quantized = {}
    out = []
    for qtype, w in weights:
        quantize, kernel = _product(path, qtype, parallel)
        if quantize not in quantized:
            quantized[quantize] = quantize(x)
        y = np.empty(w.shape[0], np.float32)
        kernel(w, *quantized[quantize], y)
        out.append(y)
    return out
