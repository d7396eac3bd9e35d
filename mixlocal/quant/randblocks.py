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
    # Relative size of each scale: dmin (where present) cancels the mean of d * sc * q,
    # so the weights are centred on zero as trained ones are.
    ratios = [1.0]
    if len(offsets) == 2:
        sample = by_block[:256].copy()
        _set_f16(sample, offsets[0], 1.0)
        _set_f16(sample, offsets[1], 0.0)
        up = float(dequantize(sample, qtype).mean())
        _set_f16(sample, offsets[0], 0.0)
        _set_f16(sample, offsets[1], 1.0)
        ratios.append(up / -float(dequantize(sample, qtype).mean()))
    for off, ratio in zip(offsets, ratios):
        _set_f16(by_block, off, ratio)
    measured = float(dequantize(by_block[:256], qtype).std()) or 1.0
    scale = std / measured * rng.uniform(0.5, 1.5, size=len(by_block))
    for off, ratio in zip(offsets, ratios):
        _set_f16(by_block, off, scale * ratio)
    return blocks


def _set_f16(blocks: np.ndarray, offset: int, value) -> None:
    """Store value (a scalar or one per block) as the f16 at `offset` of every block."""
    v = np.broadcast_to(np.asarray(value, np.float16), (len(blocks),))
    blocks[:, offset:offset + 2] = np.ascontiguousarray(v).view(np.uint8).reshape(-1, 2)
