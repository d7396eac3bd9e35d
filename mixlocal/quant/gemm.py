"""Prompt processing on 8-bit activations: Y = X W^T straight from the quantized blocks.

Each token's row of X is quantized once, as matvec does for one vector (q8.py). The
kernels then walk tiles of weight rows by tokens block by block, so the weights are
read from memory once per product and the work is compute-bound. Tile shapes, as
measured here: 4 rows x 4 tokens for the 32-weight formats, whose blocks are cheap to
decode; 1 row x 8 tokens for the K-quants, whose super-blocks are worth decoding once
for more tokens (1.3x over 4 x 4), and 1 row x 16 on AVX512-VNNI. For a MoE expert's
share of a prompt (tens of tokens) this beats dequantizing to float for BLAS by 2-3x.

The 32-weight formats (and the K-quants on AVX2) call matvec's block functions once
per (row, token): inlined, they share each weight block's decoding across the tokens
and each activation block's loads across the rows. On AVX512-VNNI the K-quants (and
Q8_0, eight blocks at a time) decode each 256-weight super-block once per tile into
512-bit registers (`_decode`), and read the activations tile by tile in order
(`_layout`); Q4_K and Q5_K chain their dot products (`_q45_sb`), and the K-quants pass
8 rows at a time over each super-block's activations (`ROWS_TOGETHER`).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .matvec import (BY_QTYPE, FLOAT_SUMS, FORMATS, _block, _k_float_mins, _k_offset_total,
                     _k_total, pair_sums, q2_pairs, q2_scales, q3_pairs, q3_scales, q4_k_pairs,
                     q5_k_pairs, q6_pairs, q6_scales, q8_0_scales, q45_scales)
from .formats import type_size
from .q8 import quantize_q8_k_halves
from .simd import (at, block_dots, chain_lanes, chained_quad, f16_at, fma, fmul, group_scales,
                   hsum, load_f32x8, load_u8x64, low_i32, mul_i16, plus_128, prefetch_l1,
                   store_f32x8, zero_sum, zeros_f32)

CHUNK_BYTES = 512 << 10  # 8-bit activations per kernel call: half a Zen 4 core's L2
TOKENS = 4  # tokens per step of a tile; quantized tokens are padded with zeros to a multiple

_QUANTIZE = {qtype: quantize for qtype, _, quantize in FORMATS.values()}
# the tile kernels' activations, where their order differs from matvec's
_TILE_QUANTIZE = {**_QUANTIZE, FORMATS["q4_k"][0]: quantize_q8_k_halves,
                  FORMATS["q5_k"][0]: quantize_q8_k_halves}
_inline = njit(cache=True, forceinline=True)


@njit(cache=True)
def _padded(n):
    """n tokens padded with zeros to a multiple of TOKENS, as they are quantized."""
    return -(-n // TOKENS) * TOKENS


@_inline
def _four(fmt, path, acc, corr, w, o, xq, xd, xs, tb, nb):
    """Weight block b of the row at byte o against tokens t..t+3, tb = t nb + b: the
    block functions index the whole (tokens, ...) arrays by flat block number, so the
    tokens share one base pointer (per-token views ran out of registers)."""
    a0, c0 = _block(fmt, path, acc[0], corr[0], w, o, xq, xd, xs, tb)
    a1, c1 = _block(fmt, path, acc[1], corr[1], w, o, xq, xd, xs, tb + nb)
    a2, c2 = _block(fmt, path, acc[2], corr[2], w, o, xq, xd, xs, tb + 2 * nb)
    a3, c3 = _block(fmt, path, acc[3], corr[3], w, o, xq, xd, xs, tb + 3 * nb)
    return (a0, a1, a2, a3), (c0, c1, c2, c3)


@_inline
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


# --- K-quants on the vnni path: each super-block decoded once for a tile's tokens -----
# A super-block becomes four u8x64 pairs of 32-weight chunks, its sixteen 16-weight
# groups' int16 scales laid out for simd.scaled_pairs, and what its total needs (d,
# minimums or offsets: `tail`). Each token then costs four 512-bit dot products and two
# int16 multiply-adds, then matvec's float32 total on 256 bits (a 512-bit FMA costs
# Zen 4 as much as two 256-bit ones).

@_inline
def _superblock(pairs, sc, tail):
    """A decoded super-block from its chunk pairs, scales (i16x16, one per group) and
    tail."""
    return pairs, group_scales(sc, 0), group_scales(sc, 8), tail


@_inline
def _q45_sb(w, o, pairs):
    """w = d sc q - dmin m per 32 weights. Two dot products of 16-weight halves chain
    into one int32 lane per 8 weights of a chunk before its scale, as their sums fit
    int16 (8 * 31 * 127 at most, Q5_K): one pack and one multiply-add per 256 weights and
    token where pair_sums takes two each (the activations in quantize_q8_k_halves'
    order)."""
    sc, mn = q45_scales(w, o)
    a0, b0 = chain_lanes(pairs[0], pairs[1])
    a1, b1 = chain_lanes(pairs[2], pairs[3])
    return ((a0, b0, a1, b1), group_scales(sc, 0),
            (f16_at(w, o), fmul(low_i32(mn), f16_at(w, o + 2))))


@_inline
def _k_sums(sb, xq, tb):
    """A decoded K-quant super-block's integer sums against the activations of flat
    block tb (as matvec's isums)."""
    pairs, low, high, _ = sb
    return pair_sums(pairs, low, high, xq, tb)


@_inline
def _q45_token(acc, sb, xq, xd, xs, tb):
    (a0, b0, a1, b1), scales, (d, mins) = sb
    isum = chained_quad(zero_sum("vnni"), a0, b0, a1, b1, xq, 256 * tb, scales)
    return _k_float_mins(acc, (isum, zero_sum("vnni")), d, mins, xs, tb, at(xd, tb))


@_inline
def _q4_k_sb(w, o):
    return _q45_sb(w, o, q4_k_pairs(w, o))


@_inline
def _q5_k_sb(w, o):
    return _q45_sb(w, o, q5_k_pairs(w, o))


@_inline
def _q6_k_sb(w, o):
    """w = d sc (q - 32): chunks 4h..4h + 3 are the low then high nibbles of the 64
    bytes at 64h, with two more bits each from the 32 bytes at 128 + 32h."""
    sc = q6_scales(w, o)
    return _superblock(q6_pairs(w, o), sc, (f16_at(w, o + 208), mul_i16(sc, -32)))


@_inline
def _offset_token(acc, sb, xq, xd, xs, tb):
    d, per16 = sb[3]
    return _k_offset_total("vnni", acc, _k_sums(sb, xq, tb), d, xs, tb, per16, at(xd, tb))


@_inline
def _q3_k_sb(w, o):
    """w = d (sc - 32) (q - 4): two low bits from the 64 bytes at 32, the third from the
    mask at 0 (matvec._q3_pair)."""
    sc, in_x_order = q3_scales(w, o)
    return _superblock(q3_pairs(w, o), sc, (f16_at(w, o + 108), mul_i16(in_x_order, -4)))


@_inline
def _q2_k_sb(w, o):
    """w = d sc q - dmin m per 16 weights; two bits each from the 64 bytes at 16
    (matvec._q2_pair)."""
    sc, mn = q2_scales(w, o)
    return _superblock(q2_pairs(w, o), sc, (f16_at(w, o + 80), mn, -f16_at(w, o + 82)))


@_inline
def _q2_token(acc, sb, xq, xd, xs, tb):
    d, mn, d16 = sb[3]
    return _k_total("vnni", acc, _k_sums(sb, xq, tb), d, xs, tb, mn, d16, at(xd, tb))


@_inline
def _q8_0_sb(w, o):
    """Eight Q8_0 blocks (f16 d, 32 int8) as one 256-weight super-block: the weights
    plus 128, unsigned for the dot products, and the eight d."""
    pairs = (plus_128(load_u8x64(w, o + 2, o + 36)), plus_128(load_u8x64(w, o + 70, o + 104)),
             plus_128(load_u8x64(w, o + 138, o + 172)),
             plus_128(load_u8x64(w, o + 206, o + 240)))
    return pairs, q8_0_scales(w, o)


@_inline
def _q8_0_token(acc, sb, xq, xd, xs, tb):
    """(w + 128) . x per block, then the 128 sum(x) back off: xs holds -128 da sum(x)
    per block, in float32."""
    (q0, q1, q2, q3), d = sb
    acc = block_dots(acc, q0, q1, q2, q3, xq, 256 * tb, d, xd, 8 * tb)
    return fma(acc, d, load_f32x8(xs, 8 * tb))


# format -> (decoder, token): the token function adds a decoded super-block times one
# token's activations to an f32x8 accumulator
_SUPERBLOCKS = {"q2_k": (_q2_k_sb, _q2_token), "q3_k": (_q3_k_sb, _offset_token),
                "q4_k": (_q4_k_sb, _q45_token), "q5_k": (_q5_k_sb, _q45_token),
                "q6_k": (_q6_k_sb, _offset_token), "q8_0": (_q8_0_sb, _q8_0_token)}


def _decode(fmt, w, o):
    """The super-block at byte o of w, decoded (fmt: a _SUPERBLOCKS name, literal)."""


def _token(fmt, acc, sb, xq, xd, xs, tb):
    """acc + a decoded super-block times the activations of flat block tb."""


@overload(_decode, prefer_literal=True, jit_options={"forceinline": True})
def _decode_impl(fmt, w, o):
    if isinstance(fmt, types.StringLiteral):
        fn = _SUPERBLOCKS[fmt.literal_value][0]
        return lambda fmt, w, o: fn(w, o)
    return None


@overload(_token, prefer_literal=True, jit_options={"forceinline": True})
def _token_impl(fmt, acc, sb, xq, xd, xs, tb):
    if isinstance(fmt, types.StringLiteral):
        fn = _SUPERBLOCKS[fmt.literal_value][1]
        return lambda fmt, acc, sb, xq, xd, xs, tb: fn(acc, sb, xq, xd, xs, tb)
    return None


@_inline
def _quad(fmt, acc, sb, xq, xd, xs, tb):
    """_token for the four flat activation blocks tb..tb + 3."""
    return (_token(fmt, acc[0], sb, xq, xd, xs, tb),
            _token(fmt, acc[1], sb, xq, xd, xs, tb + 1),
            _token(fmt, acc[2], sb, xq, xd, xs, tb + 2),
            _token(fmt, acc[3], sb, xq, xd, xs, tb + 3))


@_inline
def _store_sums(y, r, t, acc):
    """Tokens t..t + 3 of row r, less those past len(y): padding."""
    for k in range(min(TOKENS, len(y) - t)):
        y[t + k, r] = hsum(acc[k])


@_inline
def _zero_quad():
    return zeros_f32(), zeros_f32(), zeros_f32(), zeros_f32()


@_inline
def _zero_quads():
    return _zero_quad(), _zero_quad(), _zero_quad(), _zero_quad()


@_inline
def _saved_quads(part, i):
    """Four quads from part[i:i + 128]."""
    return ((load_f32x8(part, i), load_f32x8(part, i + 8), load_f32x8(part, i + 16),
             load_f32x8(part, i + 24)),
            (load_f32x8(part, i + 32), load_f32x8(part, i + 40), load_f32x8(part, i + 48),
             load_f32x8(part, i + 56)),
            (load_f32x8(part, i + 64), load_f32x8(part, i + 72), load_f32x8(part, i + 80),
             load_f32x8(part, i + 88)),
            (load_f32x8(part, i + 96), load_f32x8(part, i + 104), load_f32x8(part, i + 112),
             load_f32x8(part, i + 120)))


@_inline
def _save_quads(part, i, quads):
    for q in range(4):
        for k in range(TOKENS):
            store_f32x8(part, i + 32 * q + 8 * k, quads[q][k])


@_inline
def _row_by16(fmt, w, o, step, b0, b1, xq, xd, xs, tb, quads):
    """quads (four accumulator quads) plus super-blocks b0..b1 - 1 of the row at byte o
    against a tile of 16 tokens whose activations start at flat block tb."""
    acc0, acc1, acc2, acc3 = quads
    for b in range(b0, b1):
        sb = _decode(fmt, w, o + b * step)
        acc0 = _quad(fmt, acc0, sb, xq, xd, xs, tb + 16 * b)
        acc1 = _quad(fmt, acc1, sb, xq, xd, xs, tb + 16 * b + 4)
        acc2 = _quad(fmt, acc2, sb, xq, xd, xs, tb + 16 * b + 8)
        acc3 = _quad(fmt, acc3, sb, xq, xd, xs, tb + 16 * b + 12)
    return acc0, acc1, acc2, acc3


@_inline
def _row_by4(fmt, w, o, step, nb, xq, xd, xs, tb):
    """As _row_by16 for a tile of 4 tokens: one quad."""
    acc = _zero_quad()
    for b in range(nb):
        acc = _quad(fmt, acc, _decode(fmt, w, o + b * step), xq, xd, xs, tb + 4 * b)
    return acc


@_inline
def _row_by1(fmt, w, o, step, nb, xq, xd, xs, tb):
    """As _row_by4 for one token of a tile of 4 (tb: its first flat block)."""
    acc = zeros_f32()
    for b in range(nb):
        acc = _token(fmt, acc, _decode(fmt, w, o + b * step), xq, xd, xs, tb + TOKENS * b)
    return acc


TILE = 16  # tokens per tile of the K-quant kernels on vnni; then tiles of 4
# Rows that pass over a tile's activations together, one super-block at a time, so that
# all but the first read them from L1, their accumulators to memory and back between
# passes; each asks for its next pass's weights a pass ahead, into L1. A row passing
# alone read 256 bytes of activations from L2 per token and super-block; a row's pass
# waited for its weights (from DRAM on a block's first tile, L2 after) until they came
# ahead of it. Together, with the chained products, Q4_K 1.16-1.2x where either alone
# gained nothing; then prefetching, Q4_K 1.07-1.15x more, Q6_K 1.04-1.11x (0.93x
# together without it), Q2_K, Q3_K and Q5_K 1.02x. Q8_0 passes alone (0.99x together).
ROWS_TOGETHER = {"q2_k": 8, "q3_k": 8, "q4_k": 8, "q5_k": 8, "q6_k": 8}


def _kernel_k(fmt: str):
    together = ROWS_TOGETHER.get(fmt, 1)
    ahead = type_size(FORMATS[fmt][0]) + 63  # a super-block's lines, wherever it starts

    @njit(cache=True, parallel=True)
    def kernel(w, xq, xd, xs, y):
        """y[t, r] = row r of w . token t, in tiles of 16 tokens, then of 4 (_layout: the
        activations hold len(y) tokens and zeros up to a multiple of 4); one or two
        tokens past the last 4 run alone, where a tile of 4 would mostly compute zeros.
        Blocks of `together` rows split across threads."""
        n = len(y)
        padded = _padded(n)
        nb = xq.size // padded // 256  # super-blocks per token
        step = w.shape[1] // nb
        full = padded // TILE * TILE
        alone = n % TOKENS if n > full and n % TOKENS <= 2 else 0
        per_pass = nb if together == 1 else 1  # super-blocks in a row's pass over a tile
        for block in prange(-(-w.shape[0] // together)):
            first, end = block * together, min(block * together + together, w.shape[0])
            part = np.empty(128 * together, np.float32)  # accumulators between passes
            for t in range(0, full, TILE):
                for b in range(0, nb, per_pass):
                    for r in range(first, end):
                        i, o = 128 * (r - first), r * w.shape[1]
                        if together > 1:  # the row's next pass (ROWS_TOGETHER)
                            prefetch_l1(w, o + (b + 1) * step, ahead)
                        quads = _row_by16(fmt, w, o, step, b, min(b + per_pass, nb), xq, xd, xs,
                                          t * nb, _saved_quads(part, i) if b else _zero_quads())
                        if b + per_pass < nb:
                            _save_quads(part, i, quads)
                        else:
                            for k in range(TILE // TOKENS):
                                _store_sums(y, r, t + TOKENS * k, quads[k])
            for r in range(first, end):
                _past_tiles(fmt, w, r, step, nb, xq, xd, xs, y, full, alone)
    return kernel


@_inline
def _past_tiles(fmt, w, r, step, nb, xq, xd, xs, y, full, alone):
    """Row r against the tokens past the tiles of 16: tiles of 4, then `alone` tokens."""
    n = len(y)
    o = r * w.shape[1]
    for t in range(full, n - alone, TOKENS):
        _store_sums(y, r, t, _row_by4(fmt, w, o, step, nb, xq, xd, xs, t * nb))
    last = n - alone  # the first token of the last tile of 4
    for t in range(last, n):
        y[t, r] = hsum(_row_by1(fmt, w, o, step, nb, xq, xd, xs, last * nb + t - last))


@cache
def kernels(path: str) -> dict:
    """{GGUF type: kernel(w, xq, xd, xs, y)} for a SIMD path ("vnni" or "avx2").

    Compiles lazily, per type on first use; call only with a path this CPU has.
    """
    return {qtype: (_kernel_1x8 if name.endswith("_k") else _kernel_4x4)(
                name + "_fsums" if name in FLOAT_SUMS else name, path)
            for name, (qtype, _, _) in FORMATS.items()}


@cache
def tile_kernels() -> dict:
    """{GGUF type: kernel(w, xq, xd, xs, y)} on AVX512-VNNI for rows of whole 256-weight
    super-blocks, activations in tiles (_layout)."""
    return {FORMATS[name][0]: _kernel_k(name) for name in _SUPERBLOCKS}


def matmul_q8(path: str, qtype, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(n, cols) float32 x times the blocks w (rows, row_bytes), transposed: (n, rows).

    Tokens are quantized to 8 bits as matvec quantizes its vector (relative error
    about 1e-2 against float weights times float x).
    """
    return matmul_q8_multi(path, [(qtype, w)], x)[0]


def matmul_q8_multi(path: str, weights, x: np.ndarray) -> list[np.ndarray]:
    """[matmul_q8(path, qtype, w, x) for (qtype, w) in weights], quantizing x once per
    kind of activations and layout (gate and up of an expert; q, k and v)."""
    n = len(x)
    padded = _padded(n)  # the kernels take tokens 4 at a time
    quantized = {}
    out = []
    for qtype, w in weights:
        tiled = path == "vnni" and BY_QTYPE[qtype] in _SUPERBLOCKS and x.shape[1] % 256 == 0
        quantize = (_TILE_QUANTIZE if tiled else _QUANTIZE)[qtype]
        if (quantize, tiled) not in quantized:
            unit = 256 if tiled else quantize.block  # a tile kernel's super-block
            quantized[quantize, tiled] = quantize.rows(
                x, *_layout(padded, x.shape[1] // unit, tiled), unit,
                _aligned(padded * x.shape[1], np.int8))
        xq, xd, xs = quantized[quantize, tiled]
        xs = _sums(qtype, tiled, xd, xs)
        out.append(_product(path, qtype, w, (xq, xd, xs), tiled, n))
    return out


def _layout(n: int, nb: int, tiled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Where each of n tokens' nb units (blocks, or super-blocks when tiled) go: unit k
    of token t to unit first[t] + k stride[t]. Tiled: tile by tile (TILE tokens a tile,
    then 4), each tile unit by unit with its tokens side by side, so that one row's pass
    reads them in order (token rows 2^k bytes apart would also meet in the same L1 sets)."""
    t = np.arange(n)
    if not tiled:
        return t * nb, np.ones(n, np.int64)
    full = n // TILE * TILE
    stride = np.where(t < full, TILE, TOKENS)
    start = np.where(t < full, t // TILE * TILE, full + (t - full) // TOKENS * TOKENS)
    return start * nb + t - start, stride


def _sums(qtype, tiled: bool, xd: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The activation sums in the form qtype's kernel takes them."""
    if tiled and BY_QTYPE[qtype] == "q8_0":
        return -128 * xd * xs  # see _q8_0_token
    if BY_QTYPE[qtype] in FLOAT_SUMS:
        # -da times each 32-weight chunk's activation sum, in float32: the weights'
        # minimums meet these in one FMA per super-block and token
        halves = xs.reshape(-1, 8, 2)
        return ((halves[..., 0] + halves[..., 1]) * -xd[:, None]).reshape(-1)
    return xs


def _product(path: str, qtype, w: np.ndarray, activations, tiled: bool,
             n: int) -> np.ndarray:
    """w times n tokens' quantized activations (xq, xd, xs), laid out by _layout and
    padded to a multiple of TOKENS. The tile kernels leave out the padding; the others
    compute it too."""
    padded = _padded(n)
    y = np.empty((n if tiled else padded, w.shape[0]), np.float32)
    kernel = (tile_kernels() if tiled else kernels(path))[qtype]
    xq, xd, xs = (a.reshape(padded, -1) for a in activations)
    # Tokens in chunks whose activations stay in L2 while every row passes over them;
    # whole tiles, so each chunk is laid out as _layout lays out its tokens alone.
    chunk = max(TILE, CHUNK_BYTES // xq.shape[1] // TILE * TILE)
    for t in range(0, padded, chunk):
        part = xq[t:t + chunk], xd[t:t + chunk], xs[t:t + chunk]
        if tiled:
            part = [a.reshape(-1) for a in part]
        kernel(w, *part, y[t:t + chunk])
    return y[:n]


def _aligned(size: int, dtype) -> np.ndarray:
    """An empty 1-D array whose data starts on a 64-byte boundary: the tile kernels'
    512-bit loads then never straddle two cache lines."""
    raw = np.empty(size * np.dtype(dtype).itemsize + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + size * np.dtype(dtype).itemsize].view(dtype)
