"""The block formats mixlocal reads: sizes, and which types are supported."""

from ..ggml_types import BLOCK_SIZES, GGMLType as QT

# Every type that popular Mixtral/Mistral/Llama downloads use.
SUPPORTED = frozenset({
    QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
    QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K,
})


def block_size(qtype: QT) -> int:
    """Weights per block."""
    return BLOCK_SIZES[qtype][0]


def type_size(qtype: QT) -> int:
    """Bytes per block."""
    return BLOCK_SIZES[qtype][1]


def row_bytes(qtype: QT, n: int) -> int:
    """Bytes of one row of n weights (n must be a whole number of blocks)."""
    return n // block_size(qtype) * type_size(qtype)
