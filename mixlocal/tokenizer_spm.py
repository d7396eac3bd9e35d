"""The `llama` tokenizer: SentencePiece BPE with byte fallback, rebuilt from GGUF metadata.

A GGUF file holds the pieces, scores and types of the original tokenizer.model but not
the file itself. We write the few ModelProto fields that encoding reads (protobuf wire
format by hand: the protobuf package is not needed) and hand the bytes to
SentencePieceProcessor, so encoding is sentencepiece's own, byte for byte.
"""

from __future__ import annotations


import numpy as np
import sentencepiece as spm

from .gguf_file import GGUFError

# Token types, shared by GGUF and sentencepiece's ModelProto.SentencePiece.Type.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_MODEL_TYPE_BPE = 2
_UNK_SURFACE = " \u2047 "  # what sentencepiece prints for <unk>


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative ints are ten-byte two's complement in protobuf
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _length_prefixed(data: bytes) -> bytes:
    n = len(data)
    return (bytes((n,)) if n < 0x80 else _varint(n)) + data


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _length_prefixed(value)


def model_proto(tokens: list[str], scores, types, *, add_dummy_prefix: bool,
                unk_id: int, bos_id: int, eos_id: int) -> bytes:
    """A serialized sentencepiece ModelProto: BPE, byte fallback, no normalization."""
    score_bytes = np.asarray(scores, "<f4").tobytes()
    parts = []
    for i, (piece, kind) in enumerate(zip(tokens, types.tolist())):
        # pieces = 1: SentencePiece {piece = 1; score = 2 (float); type = 3, NORMAL if absent}
        body = (b"\x0a" + _length_prefixed(piece.encode("utf-8"))
                + b"\x15" + score_bytes[4 * i:4 * i + 4]
                + (b"" if kind == NORMAL else bytes((0x18, kind))))
        parts.append(b"\x0a" + _length_prefixed(body))
    trainer = (_int_field(3, _MODEL_TYPE_BPE) + _int_field(4, len(tokens))
               + _int_field(35, 1)  # byte_fallback
               + _int_field(40, unk_id) + _int_field(41, bos_id) + _int_field(42, eos_id)
               + _int_field(43, -1)  # no pad
               + _bytes_field(44, _UNK_SURFACE.encode("utf-8")))
    # Mixtral's normalizer: identity (no NFKC), spaces kept as they are, escaped as ▁.
    normalizer = (_bytes_field(1, b"identity") + _int_field(3, int(add_dummy_prefix))
                  + _int_field(4, 0) + _int_field(5, 1))
    parts.append(_bytes_field(2, trainer))
    parts.append(_bytes_field(3, normalizer))
    return b"".join(parts)


def _piece_bytes(piece: str, kind: int) -> bytes:
    if kind == BYTE:
        return bytes([int(piece[3:5], 16)])  # "<0xAB>"
    if kind in (CONTROL, UNUSED):
        return b""
    if kind == UNKNOWN:
        return _UNK_SURFACE.encode("utf-8")
    return piece.replace("\u2581", " ").encode("utf-8")


class SentencePieceBackend:
    """Plain text <-> ids for a SentencePiece vocabulary (no control tokens)."""

    def __init__(self, tokens: list[str], scores, types, *, add_space_prefix: bool,
                 unk_id: int, bos_id: int, eos_id: int):
        if scores is None:
            raise GGUFError("llama tokenizer without tokenizer.ggml.scores")
        scores = np.asarray(scores, np.float32)
        types = np.asarray(types, np.int32)
        if not len(scores) == len(types) == len(tokens):
            raise GGUFError("tokenizer.ggml.tokens, .scores and .token_type differ in length")
        self.space_prefix = add_space_prefix
        proto = model_proto(tokens, scores, types, add_dummy_prefix=add_space_prefix,
                            unk_id=unk_id, bos_id=bos_id, eos_id=eos_id)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(proto)
        except RuntimeError as e:
            raise GGUFError(f"invalid SentencePiece vocabulary in the file: {e}") from None
        self.token_bytes = [_piece_bytes(p, k) for p, k in zip(tokens, types.tolist())]

    def encode(self, text: str) -> list[int]:
        return self._sp.EncodeAsIds(text)
