"""The SIMD int8 matrix-vector kernels, every format on every path this CPU has.

Two references, both from gguf-py's dequantizer and float64 products:
- the same 8-bit activations the kernel used: the integer dot products are exact, so
  only float32 scaling and summation differ: |y - W xq| <= 1e-5 * (|W| |xq|) per row;
- the float activations: rounding x to 8 bits moves each x_i by at most half its
  block's step d, so |y - W x| <= (|W| d) / 2 + 1e-5 * (|W| |x|) per row, and over a
  whole output vector of 300 rows ||y - W x|| / ||W x|| < 1e-2.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize

import mixlocal.quant as quant
from mixlocal.quant import QT, QTensor, cpu, row_bytes, simd
from mixlocal.quant.matvec import FORMATS, matvec_blocks, matvec_multi, quantize_for
from mixlocal.quant.q8 import (quantize_q8_0, quantize_q8_0_pairs, quantize_q8_k,
                               quantize_q8_k_crumbs, quantize_q8_k_halves,
                               quantize_q8_k_nibbles)
from mixlocal.quant.randblocks import random_blocks

SIMD_PATHS = [p for p in cpu.available_paths() if p != "plain"]
QTYPES = [qtype for qtype, _, _ in FORMATS.values()]
ROWS = (1, 7, 65, 300)
EXACT = 1e-5


def _cols(qtype):
    """One block, an odd number of blocks (the K-quant kernels pair them), several (for
    the 32-weight formats, eight blocks a step: two groups and one more)."""
    return (256, 768, 1280) if qtype.name.endswith("_K") else (32, 96, 544)


def _weights(qtype, rows, cols, seed):
    """Read-only blocks, as the memory map gives them, and their float64 values."""
    blocks = random_blocks(qtype, (rows, cols), np.random.default_rng(seed))
    blocks.flags.writeable = False
    return blocks, gguf_dequantize(blocks, qtype).reshape(rows, cols).astype(np.float64)


def _steps(qtype, x):
    """Per element: the 8-bit step d of its activation block."""
    xq = quantize_for(qtype, x)
    return np.repeat(xq.d, x.size // xq.d.size).astype(np.float64), xq


def _check(y, W, x, qtype):
    steps, xq = _steps(qtype, x)
    xd = xq.dequantize().astype(np.float64)
    absw = np.abs(W)
    assert y.dtype == np.float32 and y.shape == (W.shape[0],)
    assert np.all(np.abs(y - W @ xd) <= EXACT * (absw @ np.abs(xd)) + 1e-30)
    bound = 0.5 * (absw @ steps) + EXACT * (absw @ np.abs(x))
    assert np.all(np.abs(y - W @ x.astype(np.float64)) <= bound)


@pytest.mark.skipif(not SIMD_PATHS, reason="this CPU has neither AVX2 nor AVX512-VNNI")
@pytest.mark.parametrize("path", SIMD_PATHS)
@pytest.mark.parametrize("qtype", QTYPES, ids=[q.name for q in QTYPES])
def test_kernel_against_dequantized_float64(qtype, path):
    rng = np.random.default_rng(3)
    for rows in ROWS:
        for cols in _cols(qtype):
            blocks, W = _weights(qtype, rows, cols, rows * cols)
            x = rng.standard_normal(cols).astype(np.float32)
            _check(matvec_blocks(path, qtype, blocks, x), W, x, qtype)
    # a whole output vector: the error statement llama.cpp users know
    y_ref = W @ x.astype(np.float64)
    y = matvec_blocks(path, qtype, blocks, x)
    assert np.linalg.norm(y - y_ref) < 1e-2 * np.linalg.norm(y_ref)


@pytest.mark.skipif(not SIMD_PATHS, reason="this CPU has neither AVX2 nor AVX512-VNNI")
@pytest.mark.parametrize("path", SIMD_PATHS)
@pytest.mark.parametrize("qtype", QTYPES, ids=[q.name for q in QTYPES])
def test_serial_kernels_equal_parallel(qtype, path):
    """Small products take a serial build of each kernel (no thread switch): the same
    arithmetic row by row, so the same bits."""
    cols = _cols(qtype)[1]
    blocks, _ = _weights(qtype, 13, cols, 13)
    x = np.random.default_rng(5).standard_normal(cols).astype(np.float32)
    np.testing.assert_array_equal(matvec_blocks(path, qtype, blocks, x, parallel=False),
                                  matvec_blocks(path, qtype, blocks, x))


@pytest.mark.skipif(not SIMD_PATHS, reason="this CPU has neither AVX2 nor AVX512-VNNI")
@pytest.mark.parametrize("path", SIMD_PATHS)
def test_long_rows(path):
    """Rows as long as Mixtral's down projection: an activation larger than L1."""
    cols = 14336
    rng = np.random.default_rng(8)
    for qtype in (QT.Q4_0, QT.Q8_0, QT.Q4_K, QT.Q6_K):
        blocks, W = _weights(qtype, 5, cols, 5)
        x = rng.standard_normal(cols).astype(np.float32)
        _check(matvec_blocks(path, qtype, blocks, x), W, x, qtype)


# Byte range of each block's weight bits (no scales): filled with 0xFF, every weight
# takes its largest unsigned value (Q8_0: 0x80, the most negative int8).
_WEIGHT_BYTES = {QT.Q4_0: (2, 18), QT.Q4_1: (4, 20), QT.Q5_0: (2, 22), QT.Q5_1: (4, 24),
                 QT.Q8_0: (2, 34), QT.Q2_K: (16, 80), QT.Q3_K: (0, 96), QT.Q4_K: (16, 144),
                 QT.Q5_K: (16, 176), QT.Q6_K: (0, 192)}


@pytest.mark.skipif(not simd.VBMI, reason="this CPU lacks AVX512-VBMI")
def test_k4_scales_by_multishift_equal_the_scalar_decode():
    """Q4_K's and Q5_K's 6-bit scales and minimums, decoded by vpmultishiftqb (this
    CPU's kernels) and by scalar operations (CPUs without VBMI): the same 8 + 8 values
    for every super-block, random bytes and all-ones bytes alike."""
    from numba import njit

    from mixlocal.quant.matvec import _q45_scales_bits, _q45_scales_vbmi
    from mixlocal.quant.simd import fmul, low_i32, store_f32x8

    @njit
    def decoded(w):
        out = np.empty((len(w), 2, 2, 8), np.float32)
        for r in range(len(w)):
            for k, (sc, mn) in enumerate((_q45_scales_bits(w, r * w.shape[1]),
                                          _q45_scales_vbmi(w, r * w.shape[1]))):
                store_f32x8(out[r, k, 0], 0, fmul(low_i32(sc), 1.0))
                store_f32x8(out[r, k, 1], 0, fmul(low_i32(mn), 1.0))
        return out

    blocks = random_blocks(QT.Q4_K, (200, 256), np.random.default_rng(9))
    blocks[0, 4:16] = 0xFF
    out = decoded(blocks)
    np.testing.assert_array_equal(out[:, 0], out[:, 1])
    assert out.max() == 63 and out.min() == 0


@pytest.mark.skipif(not SIMD_PATHS, reason="this CPU has neither AVX2 nor AVX512-VNNI")
@pytest.mark.parametrize("path", SIMD_PATHS)
@pytest.mark.parametrize("qtype", QTYPES, ids=[q.name for q in QTYPES])
def test_extreme_values_do_not_overflow(qtype, path):
    """Largest weights times activations of +-127: the AVX2 int16 pair sums and the
    int32 super-block sums must neither saturate nor wrap."""
    rows, cols = 3, 512
    blocks = random_blocks(qtype, (rows, cols), np.random.default_rng(4))
    by_block = blocks.reshape(-1, quant.type_size(qtype))
    start, end = _WEIGHT_BYTES[qtype]
    by_block[:, start:end] = 0x80 if qtype == QT.Q8_0 else 0xFF
    W = gguf_dequantize(blocks, qtype).reshape(rows, cols).astype(np.float64)
    for x in (np.ones(cols, np.float32), np.resize(np.float32([1, -1]), cols)):
        _check(matvec_blocks(path, qtype, blocks, x), W, x, qtype)


@pytest.mark.parametrize("path", SIMD_PATHS + ["plain"])
def test_quant_matvec_dispatch(path, monkeypatch):
    monkeypatch.setattr(quant, "kernel_path", lambda: path)
    rng = np.random.default_rng(5)
    for qtype in (QT.Q4_0, QT.Q4_K, QT.F32):
        blocks, W = _weights(qtype, 65, 512, 9)
        w = QTensor(qtype, (65, 512), blocks)
        x = rng.standard_normal(512).astype(np.float32)
        y = quant.matvec(w, x)
        if path == "plain" or qtype == QT.F32:
            y_ref = W @ x.astype(np.float64)
            assert np.linalg.norm(y - y_ref) < EXACT * np.linalg.norm(y_ref)
        else:
            _check(y, W, x, qtype)
        with pytest.raises(ValueError):
            quant.matvec(w, x[:-32])


@pytest.mark.skipif(not SIMD_PATHS, reason="this CPU has neither AVX2 nor AVX512-VNNI")
def test_matvec_multi_quantizes_once_per_kind():
    """Mixed formats (as q, k, v of a Q4_K_M file): each result equals its own matvec."""
    path = SIMD_PATHS[0]
    cols = 512
    ws = [(qtype, _weights(qtype, rows, cols, rows)[0])
          for qtype, rows in ((QT.Q4_K, 64), (QT.Q8_0, 16), (QT.Q6_K, 16), (QT.Q4_0, 7))]
    x = np.random.default_rng(1).standard_normal(cols).astype(np.float32)
    got = matvec_multi(path, ws, x)
    for (qtype, blocks), y in zip(ws, got):
        np.testing.assert_array_equal(y, matvec_blocks(path, qtype, blocks, x))


@pytest.mark.parametrize("quantize,block,sum_len", [(quantize_q8_0, 32, 32),
                                                    (quantize_q8_k, 256, 16),
                                                    (quantize_q8_k_nibbles, 256, 16),
                                                    (quantize_q8_k_crumbs, 256, 16),
                                                    (quantize_q8_k_halves, 256, 16),
                                                    (quantize_q8_0_pairs, 32, 32)])
def test_activation_quantization(quantize, block, sum_len):
    x = np.random.default_rng(2).standard_normal(3 * block).astype(np.float32) * 5
    x[:block] = 0.0  # an all-zero block has scale 0 and values 0
    x.flags.writeable = False
    xq = quantize(x)
    assert xq.q.dtype == np.int8 and xq.d.dtype == np.float32
    assert np.abs(xq.q.astype(np.int32)).max() == 127 and xq.q.min() >= -127
    assert xq.d[0] == 0 and not xq.q[:block].any()
    steps = np.repeat(xq.d, block)
    assert np.all(np.abs(xq.dequantize() - x) <= 0.5 * steps * (1 + 1e-6))
    sums = xq.values().astype(np.int32).reshape(-1, sum_len).sum(1)
    np.testing.assert_array_equal(xq.s, sums)
    with pytest.raises(ValueError):
        quantize(x[:-1])


@pytest.mark.parametrize("quantize,plain,run,order", [
    (quantize_q8_k_nibbles, quantize_q8_k, 32, [0, 2, 1, 3, 4, 6, 5, 7]),
    (quantize_q8_k_crumbs, quantize_q8_k, 32, [0, 4, 1, 5, 2, 6, 3, 7]),
    (quantize_q8_k_halves, quantize_q8_k, 16, [0, 4, 2, 6, 1, 5, 3, 7,
                                               8, 12, 10, 14, 9, 13, 11, 15]),
    (quantize_q8_0_pairs, quantize_q8_0, 16, [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14,
                                               7, 15])])
def test_activations_in_the_order_of_bit_fields(quantize, plain, run, order):
    """Activations in the order a format's kernel reads its weights: Q4_K's and Q5_K's
    nibbles (in 32s for matvec, in 16s for gemm's tiles), Q2_K's and Q3_K's 2-bit
    fields, Q4_0's blocks k and k + 4 of eight. Each whole 256 values' runs stored in
    `order`, the rest as they are; steps and sums in x's order; values() and
    dequantize() back in x's order."""
    n = 512 + 32 * (quantize.block == 32)  # one block past the whole spans, where it fits
    x = np.random.default_rng(4).standard_normal(n).astype(np.float32)
    got, want = quantize(x), plain(x)
    whole = x.size // 256 * 256
    stored = want.q[:whole].reshape(-1, len(order), run)[:, order].reshape(-1)
    np.testing.assert_array_equal(got.q, np.concatenate([stored, want.q[whole:]]))
    np.testing.assert_array_equal(got.d, want.d)
    np.testing.assert_array_equal(got.s, want.s)
    np.testing.assert_array_equal(got.values(), want.q)
    np.testing.assert_array_equal(got.dequantize(), want.dequantize())


@pytest.mark.parametrize("quantize", [quantize_q8_0, quantize_q8_k, quantize_q8_k_nibbles,
                                      quantize_q8_k_crumbs, quantize_q8_k_halves,
                                      quantize_q8_0_pairs])
def test_rows_quantized_where_the_layout_puts_them(quantize):
    """Quantizer.rows (the GEMM's) equals the vector quantizer row by row, each 256-value
    unit k of row t at unit first[t] + k stride[t]: here the tokens side by side."""
    n, units = 5, 3
    x = np.random.default_rng(3).standard_normal((n, 256 * units)).astype(np.float32)
    q, d, s = quantize.rows(x, np.arange(n), np.full(n, n), 256, np.empty(x.size, np.int8))
    per_unit = [a.reshape(units, n, -1) for a in (q, d, s)]
    for t in range(n):
        for got, want in zip(per_unit, quantize(x[t])):
            np.testing.assert_array_equal(got[:, t].reshape(-1), want)


def test_kernel_path_choice(monkeypatch, capsys):
    assert cpu.available_paths()[-1] == "plain"
    for want, expect in (("plain", "plain"), ("bogus", cpu.available_paths()[0]),
                         ("", cpu.available_paths()[0])):
        monkeypatch.setenv("MIXLOCAL_KERNELS", want)
        cpu.kernel_path.cache_clear()
        assert cpu.kernel_path() == expect
    assert "MIXLOCAL_KERNELS=bogus ignored" in capsys.readouterr().err
    cpu.kernel_path.cache_clear()


def test_row_bytes_match_kernel_blocks():
    """The kernels take a block's size from the row length: it must be the format's."""
    for name, (qtype, _, quantize) in FORMATS.items():
        cols = 256
        assert row_bytes(qtype, cols) % quantize(np.zeros(cols, np.float32)).d.size == 0, name


_OTHER_CPU = """
import numpy as np
from gguf.quants import dequantize
from mixlocal.quant import QT, QTensor, cpu, matvec, simd
from mixlocal.quant.randblocks import random_blocks
print(",".join(cpu.available_paths()), simd.GFNI)
rng = np.random.default_rng(0)
for qtype in (QT.Q4_0, QT.Q8_0, QT.Q4_K, QT.Q6_K):
    w = QTensor(qtype, (9, 512), random_blocks(qtype, (9, 512), rng))
    x = rng.standard_normal(512).astype(np.float32)
    ref = dequantize(w.data, qtype).reshape(9, 512).astype(np.float64) @ x
    print(qtype.name, float(np.linalg.norm(matvec(w, x) - ref) / np.linalg.norm(ref)))
"""


_AVX2 = "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2"


@pytest.mark.parametrize("cpu_name,features,paths", [
    ("haswell", _AVX2, "avx2,plain"),
    ("cascadelake", _AVX2 + ",+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx512cd,+avx512vnni",
     "vnni,avx2,plain"),
    ("generic", "", "plain"),
])
def test_compiling_for_another_cpu(cpu_name, features, paths):
    """Numba told to compile for an AVX2-only, an AVX512-VNNI without GFNI (its weight
    bits by shifts, simd._fields), or a generic x86 CPU: only the paths that CPU has are
    offered and compiled, and they are right. Running such code here is fine; compiling
    VNNI code for a CPU without it would abort the process. (Numba's cache keys code by
    CPU name and features: these entries sit beside this host's.)"""
    env = dict(os.environ, NUMBA_CPU_NAME=cpu_name, NUMBA_CPU_FEATURES=features,
               MIXLOCAL_KERNELS="")
    out = subprocess.run([sys.executable, "-c", _OTHER_CPU], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[:2] == [paths, "False"]
    for name, err in zip(lines[2::2], lines[3::2]):
        assert float(err) < (2e-2 if paths != "plain" else EXACT), name
