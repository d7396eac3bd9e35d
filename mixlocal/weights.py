"""The model's weights as views of the GGUF map, checked against the config.

Both expert layouts (merged `ffn_*_exps` and per-expert `ffn_*.E`) and dense models are
presented the same way: a layer has a list of experts, each a (gate, up, down) triple;
a dense layer has one expert and no router.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .ggml_types import GGMLType as QT
from .gguf_file import GGUFError, GGUFFile
from .quant import SUPPORTED, QTensor


@dataclass(frozen=True)
class Expert:
    gate: QTensor  # (n_ff, n_embd)
    up: QTensor    # (n_ff, n_embd)
    down: QTensor  # (n_embd, n_ff)


@dataclass(frozen=True)
class Layer:
    attn_norm: np.ndarray  # float32 (n_embd,)
    wq: QTensor
    wk: QTensor
    wv: QTensor
    wo: QTensor
    ffn_norm: np.ndarray
    router: np.ndarray | None  # float32 (n_expert, n_embd); None for a dense layer
    experts: tuple[Expert, ...]


@dataclass(frozen=True)
class Weights:
    token_embd: QTensor
    layers: tuple[Layer, ...]
    output_norm: np.ndarray
    output: QTensor  # token_embd when the output is tied

    @property
    def nbytes(self) -> int:
        """Bytes of all weights (with a tied output counted once)."""
        total = self.token_embd.nbytes + self.output_norm.nbytes
        if self.output is not self.token_embd:
            total += self.output.nbytes
        for layer in self.layers:
            total += sum(t.nbytes for t in (layer.wq, layer.wk, layer.wv, layer.wo))
            total += layer.attn_norm.nbytes + layer.ffn_norm.nbytes
            total += layer.router.nbytes if layer.router is not None else 0
            total += sum(m.nbytes for e in layer.experts for m in (e.gate, e.up, e.down))
        return total


class _Reader:
    def __init__(self, f: GGUFFile):
        self.f = f

    def has(self, name: str) -> bool:
        return f"{name}.weight" in self.f.tensors

    def _info(self, name: str, shape: tuple[int, ...]):
        full = f"{name}.weight"
        info = self.f.tensors.get(full)
        if info is None:
            raise GGUFError(f"missing tensor {full}")
        if info.shape != shape:
            raise GGUFError(f"tensor {full} has shape {list(info.shape)}, "
                            f"expected {list(shape)}")
        return full, info

    def matrix(self, name: str, shape: tuple[int, ...]) -> QTensor | list[QTensor]:
        """A 2-D weight, or a list of them for a 3-D stack of experts."""
        full, info = self._info(name, shape)
        if info.qtype not in SUPPORTED:
            raise GGUFError(f"tensor {full} has type {info.qtype.name}, which mixlocal "
                            f"does not support (supported: "
                            f"{', '.join(sorted(t.name for t in SUPPORTED))})")
        data = self.f.tensor_data(full)
        if len(shape) == 3:
            return [QTensor(info.qtype, shape[1:], data[e]) for e in range(shape[0])]
        return QTensor(info.qtype, shape, data)

    def vector(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A small float tensor (norm, router) as float32."""
        full, info = self._info(name, shape)
        if info.qtype not in (QT.F32, QT.F16):
            raise GGUFError(f"tensor {full} has type {info.qtype.name}; expected F32 or F16")
        dtype = np.float32 if info.qtype == QT.F32 else np.float16
        data = self.f.tensor_data(full).view(dtype).reshape(shape)
        return data if dtype == np.float32 else data.astype(np.float32)


def _experts(r: _Reader, blk: str, c: ModelConfig) -> tuple[Expert, ...]:
    ff, embd, n = c.n_ff, c.n_embd, c.n_expert
    if not c.is_moe:
        return (Expert(r.matrix(f"{blk}.ffn_gate", (ff, embd)),
                       r.matrix(f"{blk}.ffn_up", (ff, embd)),
                       r.matrix(f"{blk}.ffn_down", (embd, ff))),)
    if r.has(f"{blk}.ffn_gate_exps"):
        gates = r.matrix(f"{blk}.ffn_gate_exps", (n, ff, embd))
        ups = r.matrix(f"{blk}.ffn_up_exps", (n, ff, embd))
        downs = r.matrix(f"{blk}.ffn_down_exps", (n, embd, ff))
        return tuple(Expert(g, u, d) for g, u, d in zip(gates, ups, downs))
    return tuple(Expert(r.matrix(f"{blk}.ffn_gate.{e}", (ff, embd)),
                        r.matrix(f"{blk}.ffn_up.{e}", (ff, embd)),
                        r.matrix(f"{blk}.ffn_down.{e}", (embd, ff))) for e in range(n))


def load_weights(f: GGUFFile, c: ModelConfig) -> Weights:
    """Views of every weight the config calls for; raises GGUFError on any mismatch."""
    r = _Reader(f)
    kv = c.n_head_kv * c.head_dim
    layers = []
    for i in range(c.n_layer):
        blk = f"blk.{i}"
        layers.append(Layer(
            attn_norm=r.vector(f"{blk}.attn_norm", (c.n_embd,)),
            wq=r.matrix(f"{blk}.attn_q", (c.n_embd, c.n_embd)),
            wk=r.matrix(f"{blk}.attn_k", (kv, c.n_embd)),
            wv=r.matrix(f"{blk}.attn_v", (kv, c.n_embd)),
            wo=r.matrix(f"{blk}.attn_output", (c.n_embd, c.n_embd)),
            ffn_norm=r.vector(f"{blk}.ffn_norm", (c.n_embd,)),
            router=r.vector(f"{blk}.ffn_gate_inp", (c.n_expert, c.n_embd)) if c.is_moe else None,
            experts=_experts(r, blk, c),
        ))
    token_embd = r.matrix("token_embd", (c.n_vocab, c.n_embd))
    output = token_embd if c.tied_output else r.matrix("output", (c.n_vocab, c.n_embd))
    return Weights(token_embd, tuple(layers), r.vector("output_norm", (c.n_embd,)), output)
