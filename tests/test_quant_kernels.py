"""The Numba quant kernels against gguf-py's dequantizer and float64 products.

Tolerances: dequantize and get_rows must equal gguf-py bit for bit (every kernel
repeats its float32 operations in the same order). matvec and matmul accumulate in
float32, so the whole output vector must be within 1e-5 relative (L2 norm) of a
float64 product of the same dequantized weights. (quant.matvec and quant.matmul on
quantized weights take 8-bit SIMD paths when the CPU has them: those are tested in
test_matvec.py and test_gemm.py; here the portable float paths are.)
"""

import importlib

import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize

from mixlocal.quant import (QT, SUPPORTED, QTensor, block_size, dequantize, get_rows,
                            matmul, matvec)
from mixlocal.quant.matvec_plain import matvec_rows
from mixlocal.quant.randblocks import random_blocks

# the submodule, not the function of the same name that the package exports
matmul_module = importlib.import_module("mixlocal.quant.matmul")

TYPES = sorted(SUPPORTED, key=lambda t: t.name)
ROWS = (1, 7, 65, 300)
REL_TOL = 1e-5


def _cols(qtype):
    """One block, several blocks, and an odd count for the 1-weight float 'blocks'."""
    b = block_size(qtype)
    return (1, 7, 96) if b == 1 else (b, 3 * b)


def _tensor(qtype, rows, cols, seed, writeable):
    blocks = random_blocks(qtype, (rows, cols), np.random.default_rng(seed))
    if not writeable:  # as the memory map gives them
        blocks = np.frombuffer(blocks.tobytes(), np.uint8).reshape(blocks.shape)
    return QTensor(qtype, (rows, cols), blocks)


def _reference(w):
    return gguf_dequantize(np.asarray(w.data), w.qtype).reshape(w.shape).astype(np.float32)


def _rel_err(y, y_ref):
    return np.linalg.norm(y - y_ref) / np.linalg.norm(y_ref)


CASES = [(t, r, c) for t in TYPES for r in ROWS for c in _cols(t)]


@pytest.mark.parametrize("writeable", [False, True], ids=["readonly", "writeable"])
@pytest.mark.parametrize("qtype,rows,cols", CASES,
                         ids=[f"{t.name}-{r}x{c}" for t, r, c in CASES])
def test_dequantize_matches_gguf_exactly(qtype, rows, cols, writeable):
    w = _tensor(qtype, rows, cols, rows * cols, writeable)
    got = dequantize(w)
    assert got.dtype == np.float32 and got.shape == (rows, cols)
    np.testing.assert_array_equal(got, _reference(w))


def test_f16_every_bit_pattern():
    bits = np.arange(1 << 16, dtype=np.uint16)
    w = QTensor(QT.F16, (1, bits.size), bits.view(np.uint8).reshape(1, -1))
    got = dequantize(w)[0]
    np.testing.assert_array_equal(got.view(np.uint32),
                                  bits.view(np.float16).astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("qtype", TYPES, ids=[t.name for t in TYPES])
def test_get_rows_matches_gguf_exactly(qtype):
    w = _tensor(qtype, 65, _cols(qtype)[-1], 3, writeable=False)
    ids = [64, 0, 5, 5, 33]
    np.testing.assert_array_equal(get_rows(w, ids), _reference(w)[ids])
    assert get_rows(w, []).shape == (0, w.shape[1])
    with pytest.raises(IndexError):
        get_rows(w, [65])


@pytest.mark.parametrize("writeable", [False, True], ids=["readonly", "writeable"])
@pytest.mark.parametrize("qtype", TYPES, ids=[t.name for t in TYPES])
def test_plain_matvec_against_float64(qtype, writeable):
    """The portable float path (quant.matvec's fallback; test_matvec.py tests SIMD)."""
    rng = np.random.default_rng(7)
    for rows in ROWS:
        for cols in _cols(qtype):
            w = _tensor(qtype, rows, cols, rows + cols, writeable)
            x = rng.standard_normal(cols).astype(np.float32)
            y = np.empty(rows, np.float32)
            matvec_rows(int(qtype), w.data, x, y)
            y_ref = _reference(w).astype(np.float64) @ x.astype(np.float64)
            assert _rel_err(y, y_ref) < REL_TOL, (rows, cols)


@pytest.mark.parametrize("qtype", TYPES, ids=[t.name for t in TYPES])
def test_matmul_against_float64(qtype, monkeypatch):
    rng = np.random.default_rng(11)
    for rows in ROWS:
        cols = _cols(qtype)[-1]
        w = _tensor(qtype, rows, cols, rows, writeable=False)
        # 16-row tiles, so most row counts end in a partial tile
        monkeypatch.setattr(matmul_module, "TILE_BYTES", 0)
        monkeypatch.setattr(matmul_module, "MIN_TILE_ROWS", 16)
        w_ref = _reference(w).astype(np.float64)
        for n in (2, 5, 33):
            x = rng.standard_normal((n, cols)).astype(np.float32)
            y = matmul_module.matmul_tiled(int(qtype), w.data, x)  # the float path
            assert y.dtype == np.float32 and y.shape == (n, rows)
            assert _rel_err(y, x.astype(np.float64) @ w_ref.T) < REL_TOL, (rows, n)
        # one token is a matrix-vector product
        np.testing.assert_array_equal(matmul(w, x[:1]), matvec(w, x[0])[None])


def test_products_reject_wrong_input_shapes():
    w = _tensor(QT.Q8_0, 4, 64, 0, writeable=False)
    with pytest.raises(ValueError):
        matvec(w, np.zeros(32, np.float32))
    with pytest.raises(ValueError):
        matmul(w, np.zeros((3, 32), np.float32))
