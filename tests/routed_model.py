"""A tiny MoE model whose routers send each token id to experts known in advance.

With attention outputs and expert down projections zeroed, every layer's MoE input is the
token's embedding, chosen one-hot at dimension d = token % n_embd. RMSNorm (ffn_norm = 1)
turns it into a = 1/sqrt(1/n_embd + eps) at d, and router row e holds 2 at d for the
first choice, 1 for the second, so the router logits are 2a, a and 0 elsewhere:
top-2 weights 1/(1+exp(-a)) and 1/(1+exp(a)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mixlocal.config import ModelConfig
from mixlocal.gguf_file import GGUFFile
from mixlocal.synthetic import write_model

CONFIG = ModelConfig(n_vocab=512, n_embd=64, n_layer=3, n_ff=32, n_head=4, n_head_kv=2,
                     n_ctx_train=256, rope_dim=16, rope_base=1e4, n_expert=8,
                     n_expert_used=2, name="routed tiny MoE")


def first_choice(layer: int, token) -> np.ndarray:
    """Layer 0 follows the id; deeper layers group runs of 2**layer neighbouring ids."""
    d = np.asarray(token) % CONFIG.n_embd
    return (d >> layer) % CONFIG.n_expert


def second_choice(layer: int, token) -> np.ndarray:
    return (first_choice(layer, token) + 1 + layer) % CONFIG.n_expert


def expected_weights() -> tuple[float, float]:
    a = 1.0 / np.sqrt(1.0 / CONFIG.n_embd + CONFIG.norm_eps)
    return 1.0 / (1.0 + np.exp(-a)), 1.0 / (1.0 + np.exp(a))


def write_routed_model(path: Path) -> Path:
    write_model(path, CONFIG, "f32", seed=1)
    infos = dict(GGUFFile(path).tensors)

    def tensor(name):
        info = infos[name]
        return np.memmap(path, np.float32, "r+", offset=info.offset, shape=info.shape)

    c = CONFIG
    embd = tensor("token_embd.weight")
    embd[:] = 0
    embd[np.arange(c.n_vocab), np.arange(c.n_vocab) % c.n_embd] = 1
    embd.flush()
    dims = np.arange(c.n_embd)
    for layer in range(c.n_layer):
        for name in ("attn_output", "ffn_down_exps", "ffn_norm", "ffn_gate_inp"):
            t = tensor(f"blk.{layer}.{name}.weight")
            t[:] = 1 if name == "ffn_norm" else 0
            if name == "ffn_gate_inp":
                t[first_choice(layer, dims), dims] = 2
                t[second_choice(layer, dims), dims] = 1
            t.flush()
    return path
