"""Valid random quantized blocks of every supported type, for tests and benchmarks.

gguf-py quantizes the simple types itself; for the K-quants (which it only
dequantizes) the blocks are random bytes with their f16 super-block scales set so the
weights have the standard deviation asked for.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize

from .formats import SUPPORTED, row_bytes, type_size

# Byte offsets of the f16 super-block scales (d, and dmin where present) in a block.
_K_SCALE_OFFSETS = {
    QT.Q2_K: (80, 82),
    QT.Q3_K: (108,),
    QT.Q4_K: (0, 2),
    QT.Q5_K: (0, 2),
    QT.Q6_K: (208,),
}


def random_blocks(qtype: QT, shape: tuple[int, ...], rng: np.random.Generator,
                  std: float = 0.02) -> np.ndarray:
    """uint8 array (*shape[:-1], row_bytes) of valid blocks with weights of about `std`."""
    if qtype not in SUPPORTED:
        raise ValueError(f"unsupported type {qtype.name}")
    *outer, cols = shape
    if qtype not in _K_SCALE_OFFSETS:
        w = (rng.standard_normal(shape) * std).astype(np.float32)
        q = np.ascontiguousarray(quantize(w, qtype))
        return q.view(np.uint8).reshape(*outer, row_bytes(qtype, cols))

    blocks = rng.integers(0, 256, size=(*outer, row_bytes(qtype, cols)), dtype=np.uint8)
    by_block = blocks.reshape(-1, type_size(qtype))
    offsets = _K_SCALE_OFFSETS[qtype]
    for off in offsets:
        by_block[:, off:off + 2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    measured = float(dequantize(by_block[:256], qtype).std()) or 1.0
    scale = std / measured * rng.uniform(0.5, 1.5, size=len(by_block))
    for off in offsets:
        by_block[:, off:off + 2] = scale.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return blocks
