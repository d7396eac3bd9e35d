"""A plain float64 numpy implementation of a llama / Mixtral GGUF: the yardstick.

It shares no code with mixlocal: the file is read with gguf-py's GGUFReader, every
tensor is dequantized with gguf.quants.dequantize, and the whole sequence is run in
one pass, head by head, with no cache.
"""

from __future__ import annotations

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


class Reference:
    def __init__(self, path):
        r = GGUFReader(path)
        arch = bytes(r.fields["general.architecture"].parts[-1]).decode()

        def meta(key, default=None):
            field = r.fields.get(f"{arch}.{key}")
            return default if field is None else field.parts[-1][0].item()

        self.n_embd = meta("embedding_length")
        self.n_layer = meta("block_count")
        self.n_head = meta("attention.head_count")
        self.n_head_kv = meta("attention.head_count_kv", self.n_head)
        self.head_dim = self.n_embd // self.n_head
        self.rope_dim = meta("rope.dimension_count", self.head_dim)
        self.rope_base = meta("rope.freq_base", 10000.0)
        self.eps = meta("attention.layer_norm_rms_epsilon")
        self.n_expert = meta("expert_count", 0)
        self.n_expert_used = meta("expert_used_count", 0)
        self.t = {}
        for t in r.tensors:
            shape = tuple(int(d) for d in reversed(t.shape))
            self.t[t.name.removesuffix(".weight")] = (
                dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float64))
        self.output = self.t.get("output", self.t["token_embd"])

    def expert(self, i: int, e: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        blk = f"blk.{i}"
        if e is None:
            return self.t[f"{blk}.ffn_gate"], self.t[f"{blk}.ffn_up"], self.t[f"{blk}.ffn_down"]
        if f"{blk}.ffn_gate_exps" in self.t:
            return tuple(self.t[f"{blk}.ffn_{m}_exps"][e] for m in ("gate", "up", "down"))
        return tuple(self.t[f"{blk}.ffn_{m}.{e}"] for m in ("gate", "up", "down"))

    def norm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, positions):
        """x (n, heads, hd): pairs (2i, 2i+1) as complex numbers times e^(i pos theta_i)."""
        d = self.rope_dim
        theta = self.rope_base ** (-np.arange(d // 2) * 2.0 / d)
        rot = np.exp(1j * np.outer(positions, theta))[:, None, :]
        z = (x[..., 0:d:2] + 1j * x[..., 1:d:2]) * rot
        out = x.copy()
        out[..., 0:d:2], out[..., 1:d:2] = z.real, z.imag
        return out

    def ffn(self, x, gate, up, down):
        g = x @ gate.T
        return (g / (1 + np.exp(-g)) * (x @ up.T)) @ down.T

    def logits(self, tokens, n_expert_used: int | None = None,
               routes: dict | None = None) -> np.ndarray:
        """Logits (n, n_vocab) of every token of the sequence; `routes`, if given, gets
        {layer: chosen experts (n, k)}."""
        t, hd = self.t, self.head_dim
        n = len(tokens)
        pos = np.arange(n)
        x = t["token_embd"][np.asarray(tokens)]
        for i in range(self.n_layer):
            blk = f"blk.{i}"
            h = self.norm(x, t[f"{blk}.attn_norm"])
            q = self.rope((h @ t[f"{blk}.attn_q"].T).reshape(n, self.n_head, hd), pos)
            k = self.rope((h @ t[f"{blk}.attn_k"].T).reshape(n, self.n_head_kv, hd), pos)
            v = (h @ t[f"{blk}.attn_v"].T).reshape(n, self.n_head_kv, hd)
            heads = []
            for head in range(self.n_head):
                kv = head * self.n_head_kv // self.n_head
                s = q[:, head] @ k[:, kv].T / np.sqrt(hd)
                s[np.triu_indices(n, 1)] = -np.inf
                p = np.exp(s - s.max(axis=1, keepdims=True))
                heads.append(p / p.sum(axis=1, keepdims=True) @ v[:, kv])
            x = x + np.concatenate(heads, axis=1) @ t[f"{blk}.attn_output"].T

            h = self.norm(x, t[f"{blk}.ffn_norm"])
            if not self.n_expert:
                x = x + self.ffn(h, *self.expert(i, None))
                continue
            k_used = n_expert_used or self.n_expert_used
            out = np.zeros_like(x)
            chosen = []
            for j in range(n):
                p = np.exp(t[f"{blk}.ffn_gate_inp"] @ h[j])
                p /= p.sum()
                top = np.argsort(-p)[:k_used]
                chosen.append(top)
                for e in top:
                    out[j] += p[e] / p[top].sum() * self.ffn(h[j:j + 1], *self.expert(i, e))[0]
            x = x + out
            if routes is not None:
                routes[i] = np.array(chosen)
        return self.norm(x, t["output_norm"]) @ self.output.T
