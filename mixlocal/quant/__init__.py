"""Quantized tensors and the products mixlocal computes on them.

A QTensor is a 2-D weight matrix whose rows are runs of blocks, left where they lie
in the memory map. Everything above this package multiplies through these functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import get_num_threads

from ..ggml_types import GGMLType as QT
from .dequant import row_kernels
from .formats import SUPPORTED, block_size, row_bytes, type_size
from .cpu import kernel_path
from .gemm import matmul_q8, matmul_q8_multi
from .matmul import matmul_tiled
from .matvec import BY_QTYPE, matvec_blocks, times
from .matvec import matvec_multi as _matvec_multi
from .matvec_plain import matvec_rows
from .threads import PARALLEL_MIN_BYTES, run_split, threads_for

__all__ = ["QT", "QTensor", "SUPPORTED", "block_size", "row_bytes", "type_size",
           "matvec", "matvec_multi", "matmul", "matmul_multi", "dequantize", "get_rows",
           "times", "operand"]


@dataclass(frozen=True, eq=False)
class QTensor:
    qtype: QT
    shape: tuple[int, int]  # (rows, cols): rows = outputs, cols = inputs
    data: np.ndarray        # uint8 (rows, row_bytes), usually a read-only view of the map

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


_ROWS_PER_TASK = 64  # rows one thread decodes at a time in dequantize()


def _kind(w: QTensor) -> int:
    if w.qtype not in SUPPORTED:
        raise ValueError(f"unsupported quantization type {w.qtype.name}")
    return int(w.qtype)


def _blocks(w: QTensor) -> np.ndarray:
    """The blocks as a read-only C-contiguous view: one Numba signature for all."""
    data = np.ascontiguousarray(w.data)
    if data.flags.writeable:
        data = data.view()
        data.flags.writeable = False
    return data


def _vectors(x: np.ndarray, cols: int, ndim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != ndim or x.shape[-1] != cols:
        raise ValueError(f"input of shape {x.shape} does not fit a matrix of {cols} columns")
    return x


def dequantize(w: QTensor) -> np.ndarray:
    """The whole matrix as float32 (rows, cols)."""
    rows, data = row_kernels(_kind(w))[0], _blocks(w)
    out = np.empty(w.shape, np.float32)

    def decode(starts):
        for r0 in starts:
            rows(data[r0:r0 + _ROWS_PER_TASK], out[r0:r0 + _ROWS_PER_TASK])

    run_split(decode, range(0, w.shape[0], _ROWS_PER_TASK))
    return out


def get_rows(w: QTensor, ids) -> np.ndarray:
    """Rows `ids` as float32 (len(ids), cols): embedding lookup."""
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and not (0 <= ids.min() and ids.max() < w.shape[0]):
        raise IndexError(f"row ids must lie in [0, {w.shape[0]})")
    out = np.empty((ids.size, w.shape[1]), np.float32)
    row_kernels(_kind(w))[1](_blocks(w), ids, out)
    return out


def _simd(w: QTensor) -> bool:
    """Whether W x runs on 8-bit activations with SIMD integer dot products."""
    return w.qtype in BY_QTYPE and kernel_path() != "plain"


def _parallel(nbytes: int) -> bool:
    """Whether a product reading nbytes of weights splits its rows across threads: at
    least PARALLEL_MIN_BYTES, and more than one thread set (on one, the serial kernels
    serve every product and the parallel builds are never loaded)."""
    return nbytes >= PARALLEL_MIN_BYTES and get_num_threads() > 1


def matvec(w: QTensor, x: np.ndarray) -> np.ndarray:
    """y = W x for one float32 vector x of length cols.

    Quantized weights on an AVX2 or AVX512-VNNI CPU: x is quantized to 8 bits first
    (as llama.cpp does), relative error about 1e-2; float weights and other CPUs: float.
    """
    x = _vectors(x, w.shape[1], 1)
    if _simd(w):
        return matvec_blocks(kernel_path(), w.qtype, _blocks(w), x,
                             parallel=_parallel(w.nbytes))
    y = np.empty(w.shape[0], np.float32)
    with threads_for(w.nbytes):
        matvec_rows(_kind(w), _blocks(w), x, y)
    return y


def operand(w: QTensor) -> tuple[str, bool, np.ndarray] | None:
    """(format, parallel, blocks) of w for `times` (W x inside jitted code), or None
    where no SIMD kernel reads its type; parallel: whether its rows split across
    threads (threads.PARALLEL_MIN_BYTES)."""
    if not _simd(w):
        return None
    return BY_QTYPE[w.qtype], _parallel(w.nbytes), _blocks(w)


def _share_input(ws: list[QTensor]) -> bool:
    """Whether products by ws can share one 8-bit quantization of their input."""
    return bool(ws) and all(_simd(w) and w.shape[1] == ws[0].shape[1] for w in ws)


def matvec_multi(ws: list[QTensor], x: np.ndarray) -> list[np.ndarray]:
    """[W x for W in ws], quantizing x once (gate and up of an expert; q, k and v)."""
    if _share_input(ws):
        x = _vectors(x, ws[0].shape[1], 1)
        return _matvec_multi(kernel_path(), [(w.qtype, _blocks(w)) for w in ws], x,
                             parallel=_parallel(sum(w.nbytes for w in ws)))
    return [matvec(w, x) for w in ws]


def matmul(w: QTensor, x: np.ndarray) -> np.ndarray:
    """Y = X W^T for float32 X of shape (n, cols); returns (n, rows).

    As matvec: quantized weights on a SIMD CPU take 8-bit activations and integer
    dot products (gemm.py, faster than BLAS here at every token count measured);
    float weights and other CPUs: dequantized tiles and BLAS.
    """
    x = _vectors(x, w.shape[1], 2)
    if x.shape[0] == 1:
        return matvec(w, x[0])[None]
    if _simd(w):
        return matmul_q8(kernel_path(), w.qtype, _blocks(w), x)
    return matmul_tiled(_kind(w), _blocks(w), x)


def matmul_multi(ws: list[QTensor], x: np.ndarray) -> list[np.ndarray]:
    """[matmul(W, x) for W in ws], quantizing x once per kind of activations (gate and
    up of an expert; q, k and v)."""
    if len(x) == 1:
        return [y[None] for y in matvec_multi(ws, x[0])]
    if _share_input(ws):
        x = _vectors(x, ws[0].shape[1], 2)
        return matmul_q8_multi(kernel_path(), [(w.qtype, _blocks(w)) for w in ws], x)
    return [matmul(w, x) for w in ws]
