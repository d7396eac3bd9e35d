"""Quantized tensors and the products mixlocal computes on them.

A QTensor is a 2-D weight matrix whose rows are runs of blocks, left where they lie
in the memory map. Everything above this package multiplies through these functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf.constants import GGMLQuantizationType as QT

from .formats import SUPPORTED, block_size, row_bytes, type_size

__all__ = ["QT", "QTensor", "SUPPORTED", "block_size", "row_bytes", "type_size",
           "matvec", "matmul", "dequantize", "get_rows"]


@dataclass(frozen=True, eq=False)
class QTensor:
    qtype: QT
    shape: tuple[int, int]  # (rows, cols): rows = outputs, cols = inputs
    data: np.ndarray        # uint8 (rows, row_bytes), usually a read-only view of the map

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


# Provisional numpy implementations: the Numba kernels replace these.
def dequantize(w: QTensor) -> np.ndarray:
    """The whole matrix as float32 (rows, cols)."""
    from gguf.quants import dequantize as deq
    return deq(np.asarray(w.data), w.qtype).reshape(w.shape).astype(np.float32)


def get_rows(w: QTensor, ids) -> np.ndarray:
    """Rows `ids` as float32 (len(ids), cols): embedding lookup."""
    from gguf.quants import dequantize as deq
    ids = np.asarray(ids, dtype=np.int64)
    return deq(np.asarray(w.data[ids]), w.qtype).reshape(len(ids), w.shape[1]).astype(np.float32)


def matvec(w: QTensor, x: np.ndarray) -> np.ndarray:
    """y = W x for one float32 vector x of length cols."""
    return dequantize(w) @ x


def matmul(w: QTensor, x: np.ndarray) -> np.ndarray:
    """Y = X W^T for float32 X of shape (n, cols); returns (n, rows)."""
    return x @ dequantize(w).T
