"""The 8-bit prompt-processing kernel (quant.gemm), every format on every SIMD path.

Each token's output row is held to matvec's bounds (test_matvec._check: against the
same 8-bit activations up to float32 rounding, and against the float activations
within half a quantization step per element), and must equal matvec on that token up
to the order of float32 summation.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_matvec import QTYPES, SIMD_PATHS, _check, _cols, _weights

import mixlocal.quant as quant
from mixlocal.quant import QT, QTensor
from mixlocal.quant.gemm import matmul_q8, matmul_q8_multi
from mixlocal.quant.matvec import matvec_blocks

needs_simd = pytest.mark.skipif(not SIMD_PATHS,
                                reason="this CPU has neither AVX2 nor AVX512-VNNI")


@needs_simd
@pytest.mark.parametrize("path", SIMD_PATHS)
@pytest.mark.parametrize("qtype", QTYPES, ids=[q.name for q in QTYPES])
def test_gemm_against_matvec_and_float64(qtype, path):
    rng = np.random.default_rng(7)
    # rows beyond a multiple of 4 share a tile with a repeated row; tokens are padded to
    # 4s, and the K-quants take 8 at a time with a tail of 4 (on VNNI: 16, then 4, then
    # the last one or two alone; or a padded 4 or 16 where 3 or more are left; in blocks
    # of 8 rows, here two and one more, over two tiles)
    for rows, n in ((1, 2), (7, 5), (66, 9), (33, 4), (5, 16), (3, 20), (4, 15), (6, 18),
                    (2, 19), (17, 37)):
        cols = _cols(qtype)[rows % 2]
        blocks, W = _weights(qtype, rows, cols, rows + n)
        x = rng.standard_normal((n, cols)).astype(np.float32)
        y = matmul_q8(path, qtype, blocks, x)
        assert y.shape == (n, rows) and y.dtype == np.float32 and y.flags.c_contiguous
        for t in range(n):
            _check(y[t], W, x[t], qtype)
            y_vec = matvec_blocks(path, qtype, blocks, x[t])
            np.testing.assert_allclose(y[t], y_vec, rtol=1e-5,
                                       atol=1e-5 * np.abs(y_vec).max())


@pytest.mark.skipif("vnni" not in SIMD_PATHS, reason="this CPU lacks AVX512-VNNI")
def test_q8_0_in_super_blocks():
    """On VNNI, Q8_0 rows of whole 256-weight groups take the tiled kernel (eight blocks
    at a time); held to the same bounds as above."""
    rng = np.random.default_rng(10)
    for rows, n, cols in ((3, 21, 256), (10, 4, 768)):
        blocks, W = _weights(QT.Q8_0, rows, cols, n)
        x = rng.standard_normal((n, cols)).astype(np.float32)
        y = matmul_q8("vnni", QT.Q8_0, blocks, x)
        for t in range(n):
            _check(y[t], W, x[t], QT.Q8_0)
            y_vec = matvec_blocks("vnni", QT.Q8_0, blocks, x[t])
            np.testing.assert_allclose(y[t], y_vec, rtol=1e-5, atol=1e-5 * np.abs(y_vec).max())


@pytest.mark.parametrize("path", SIMD_PATHS + ["plain"])
def test_quant_matmul_dispatch(path, monkeypatch):
    """Quantized weights take the 8-bit kernel on SIMD paths; float weights and the
    plain path take dequantized tiles and BLAS (float accuracy)."""
    monkeypatch.setattr(quant, "kernel_path", lambda: path)
    x = np.random.default_rng(8).standard_normal((6, 512)).astype(np.float32)
    for qtype in (QT.Q4_0, QT.Q6_K, QT.F32):
        blocks, W = _weights(qtype, 40, 512, 3)
        y = quant.matmul(QTensor(qtype, (40, 512), blocks), x)
        if path == "plain" or qtype == QT.F32:
            y_ref = x.astype(np.float64) @ W.T
            assert np.linalg.norm(y - y_ref) < 1e-5 * np.linalg.norm(y_ref)
        else:
            np.testing.assert_array_equal(y, matmul_q8(path, qtype, blocks, x))


@needs_simd
def test_token_chunks_do_not_change_results(monkeypatch):
    """Long prompts run in chunks of tokens (here 16 and a padded 4 of 19)."""
    import mixlocal.quant.gemm as gemm
    path = SIMD_PATHS[0]
    x = np.random.default_rng(9).standard_normal((19, 512)).astype(np.float32)
    for qtype in (QT.Q4_0, QT.Q4_K):
        blocks, _ = _weights(qtype, 9, 512, 4)
        whole = matmul_q8(path, qtype, blocks, x)
        monkeypatch.setattr(gemm, "CHUNK_BYTES", 8 * 512)
        np.testing.assert_array_equal(matmul_q8(path, qtype, blocks, x), whole)
        monkeypatch.undo()


@needs_simd
@pytest.mark.parametrize("path", SIMD_PATHS)
def test_gemm_multi_quantizes_once_per_kind(path, monkeypatch):
    """Mixed formats (as q, k, v of a Q4_K_M file; Q8_0 tiled or not): each product
    equals its own matmul_q8, and quant.matmul_multi gives the same."""
    cols, n = 512, 21
    ws = [(qtype, _weights(qtype, rows, cols, rows)[0])
          for qtype, rows in ((QT.Q4_K, 40), (QT.Q8_0, 16), (QT.Q6_K, 16), (QT.Q4_0, 7),
                              (QT.Q4_K, 9))]
    x = np.random.default_rng(11).standard_normal((n, cols)).astype(np.float32)
    got = matmul_q8_multi(path, ws, x)
    for (qtype, blocks), y in zip(ws, got):
        np.testing.assert_array_equal(y, matmul_q8(path, qtype, blocks, x))
    monkeypatch.setattr(quant, "kernel_path", lambda: path)
    tensors = [QTensor(qtype, (len(blocks), cols), blocks) for qtype, blocks in ws]
    for y, y_multi in zip(got, quant.matmul_multi(tensors, x)):
        np.testing.assert_array_equal(y, y_multi)
    for w, y in zip(tensors, quant.matmul_multi(tensors, x[:1])):  # one token: matvec
        np.testing.assert_array_equal(y, quant.matvec(w, x[0])[None])
