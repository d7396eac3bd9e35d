"""The llama / Mixtral forward pass over quantized weights.

One code path serves a prompt and a single token: every product goes through
`quant.matmul`, which uses a matrix-vector kernel for one row and a matrix product for
many. In the MoE layer all tokens are routed first, then each chosen expert runs once
on the tokens it received; experts nobody chose are never read. A generated token's
layer takes the same steps in one jitted call instead (`_token_step`).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Protocol

import numba
import numpy as np
from numba import get_num_threads, njit, prange

from . import heap, quant
from .config import ModelConfig
from .gguf_file import GGUFFile
from .kv_cache import KVCache
from .quant import threads
from .weights import Expert, Layer, Weights, load_weights

DEFAULT_N_CTX = 4096
N_BATCH = 256  # prompt tokens per forward step: bounds the attention score buffers


class RouteObserver(Protocol):
    def on_route(self, layer: int, positions: np.ndarray, experts: np.ndarray,
                 weights: np.ndarray) -> None:
        """experts, weights: (n, k) chosen experts per token, best first."""


def set_threads(n: int | None = None) -> int:
    """Use n threads in the kernels (default: all cores); returns the number set."""
    return threads.set_threads(n or os.cpu_count() or 1)


@njit(cache=True, fastmath=True)
def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Each row of x (n, d) over the root of its mean square, times weight. Jitted: in
    numpy its five calls cost a token of a small model more than the arithmetic; the
    loops vectorize with fastmath (3-5x)."""
    out = np.empty_like(x)
    n = x.shape[1]
    for t in range(x.shape[0]):
        row, o = x[t], out[t]
        ss = 0.0
        for i in range(n):
            ss += np.float64(row[i]) * np.float64(row[i])
        inv = np.float32(1.0 / np.sqrt(ss / n + eps))
        for i in range(n):
            o[i] = row[i] * inv * weight[i]
    return out


@njit(cache=True, inline="always", fastmath={"contract", "arcp", "nsz"})
def _exp(y):
    """e^y in float32, within 2 ulp for y in [-87, 88.3] (e^-87 below, inf above), in
    operations that vectorize, where Numba's exp is a call per value. y = n ln 2 + f
    with ln 2 in two parts (Cody and Waite), e^f (|f| <= ln(2) / 2) by a degree-6
    Taylor polynomial, 2^n by writing the float's exponent bits (n = 128: inf)."""
    y = min(max(y, np.float32(-87.0)), np.float32(89.0))
    n = np.rint(y * np.float32(1.4426950408889634))
    f = y - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    p = np.float32(1 / 720)  # Horner: 1 + f + f^2 / 2 + ... + f^6 / 720
    p = p * f + np.float32(1 / 120)
    p = p * f + np.float32(1 / 24)
    p = p * f + np.float32(1 / 6)
    p = p * f + np.float32(1 / 2)
    p = p * f + np.float32(1.0)
    p = p * f + np.float32(1.0)
    return p * np.int32((np.int32(n) + 127) << 23).view(np.float32)


def _swiglu_kernel(parallel: bool):
    rows = prange if parallel else range  # in the closure: it keys Numba's cache

    # numpy's error model: Python's checks each division for zero, a branch that keeps
    # the serial build from vectorizing (3 ns a value, 0.35 without it)
    @njit(cache=True, parallel=parallel, fastmath={"contract", "arcp", "nsz"},
          error_model="numpy")
    def kernel(gate, up):
        out = np.empty_like(gate)
        for t in rows(gate.shape[0]):
            g, u, o = gate[t], up[t], out[t]
            for i in range(g.shape[0]):
                o[i] = g[i] / (np.float32(1.0) + _exp(-g[i])) * u[i]
        return out
    return kernel


_swiglu_serial, _swiglu_parallel = _swiglu_kernel(False), _swiglu_kernel(True)


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up = gate / (1 + e^-gate) * up, for (n, d) float32 arrays, in one
    jitted pass, rows split across threads for a prompt: numpy took six passes on one
    core (9 ms of a 256-token prompt on two threads, now 3). A token's row runs on the
    calling thread (threads.PARALLEL_MIN_BYTES)."""
    big = gate.nbytes >= threads.PARALLEL_MIN_BYTES
    return (_swiglu_parallel if big else _swiglu_serial)(gate, up)


def softmax(x: np.ndarray) -> np.ndarray:
    """Over the last axis, in place: x is a fresh array of scores (large, for a prompt's
    attention, where temporaries cost more than the arithmetic)."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


class Rope:
    """llama.cpp's "normal" RoPE: rotates adjacent pairs (x[2i], x[2i+1]) of the first
    rope_dim features by pos * base^(-2i/rope_dim). A pair is a complex number, so the
    rotation is one complex product."""

    def __init__(self, rope_dim: int, base: float, n_ctx: int):
        inv_freq = base ** (-np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)
        angles = np.outer(np.arange(n_ctx, dtype=np.float64), inv_freq)
        self.rotation = np.exp(1j * angles).astype(np.complex64)  # (n_ctx, rope_dim / 2)

    def __call__(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x: contiguous float32 (n, heads, head_dim), rotated in place and returned."""
        _rotate(x.view(np.complex64), self.rotation, positions)
        return x


@njit(cache=True)
def _rotate(pairs, rotation, positions):
    """pairs[t, h, i] *= rotation[positions[t], i] for the first rotation.shape[1] pairs
    of each head. Jitted: numpy's broadcast product cost a generated token 3 us a call,
    twice a layer, for its few hundred values."""
    for t in range(pairs.shape[0]):
        r = rotation[positions[t]]
        for h in range(pairs.shape[1]):
            p = pairs[t, h]
            for i in range(r.shape[0]):
                p[i] *= r[i]


@njit(cache=True, inline="always")
def _put(dst, src):
    """dst[...] = src, value by value, for contiguous arrays of one size: Numba's array
    assignment compiles its message for mismatched shapes, a second of a first start."""
    d, s = dst.reshape(-1), src.reshape(-1)
    for i in range(d.size):
        d[i] = s[i]


QUERY_BLOCK = 64  # a prompt's queries per step of attention
# A generated token's q.k products (heads x cached tokens x head size) below which its
# attention runs jitted on the calling thread (_attend_short): a small model's numpy
# calls cost more than their arithmetic (SmolLM2's heads: 11 us against 3 at 16 cached
# tokens, level at 200); Mixtral's heads reach it at 24 cached tokens.
SHORT_ATTENTION = 100_000
# Cached tokens from which a generated token's attention runs jitted (_attend_token):
# numpy's batched product over the cache, whose key rows lie n_kv hd floats apart per
# head, is quicker up to 256 tokens (78 us a layer, Mixtral's heads) and slows past
# them (329 us at 320, 1.1 ms at 1,024, 8.9 at 4,096; jitted, two threads: 197 us,
# 340, 1.3 ms)
LONG_CONTEXT = 288

_ATTEND_MATH = {"contract", "arcp", "nsz", "reassoc"}  # reassoc: the dot products vectorize


@njit(cache=True, fastmath=_ATTEND_MATH, error_model="numpy")
def _attend_part(q, k, v, t0, t1, scale, out, top, total):
    """One query token against cached tokens t0..t1-1, read token by token (all heads'
    keys at once, then all their values): per head its largest score (top), the sum of
    e^(score - top) (total) and of e^(score - top) v (out)."""
    n_head, hd = q.shape
    group = n_head // k.shape[1]
    scores = np.empty((t1 - t0, n_head), np.float32)
    top[:] = -np.inf
    for t in range(t0, t1):
        for h in range(n_head):
            qh, kh = q[h], k[t, h // group]
            dot = np.float32(0.0)
            for i in range(hd):
                dot += qh[i] * kh[i]
            scores[t - t0, h] = dot * scale
            top[h] = max(top[h], dot * scale)
    total[:] = 0.0
    out[:] = 0.0
    for t in range(t0, t1):
        for h in range(n_head):
            e = _exp(scores[t - t0, h] - top[h])
            total[h] += e
            oh, vh = out[h], v[t, h // group]
            for i in range(hd):
                oh[i] += e * vh[i]


@njit(cache=True, parallel=True, fastmath=_ATTEND_MATH, error_model="numpy")
def _attend_token(q, k, v, scale, parts):
    """Softmax attention of one token's queries q (n_head, hd) over the cache k, v
    (T, n_kv, hd): the cached tokens in `parts` ranges across threads, their partial
    sums then rescaled to one maximum and added (as flash-decoding merges them)."""
    n_head, hd = q.shape
    n = k.shape[0]
    outs = np.empty((parts, n_head, hd), np.float32)
    tops = np.empty((parts, n_head), np.float32)
    totals = np.empty((parts, n_head), np.float32)
    for p in prange(parts):
        _attend_part(q, k, v, p * n // parts, (p + 1) * n // parts, scale, outs[p], tops[p],
                     totals[p])
    out = np.zeros((n_head, hd), np.float32)
    for h in range(n_head):
        top = tops[:, h].max()
        total = np.float32(0.0)
        for p in range(parts):
            f = _exp(tops[p, h] - top)
            total += f * totals[p, h]
            for i in range(hd):
                out[h, i] += f * outs[p, h, i]
        for i in range(hd):
            out[h, i] /= total
    return out


@njit(cache=True, fastmath=_ATTEND_MATH, error_model="numpy")
def _attend_short(q, k, v, scale):
    """_attend_token's work in one part, on the calling thread."""
    n_head, hd = q.shape
    out = np.empty((n_head, hd), np.float32)
    top, total = np.empty(n_head, np.float32), np.empty(n_head, np.float32)
    _attend_part(q, k, v, 0, k.shape[0], scale, out, top, total)
    for h in range(n_head):
        for i in range(hd):
            out[h, i] /= total[h]
    return out


# The token kernels' arguments as Model.forward passes them: a token's queries, the cache
_TOKEN_ARGS = "float32[:, ::1], float32[:, :, ::1], float32[:, :, ::1], float32"
_TOKEN_KERNELS = ((_attend_token, f"({_TOKEN_ARGS}, int64)"), (_attend_short, f"({_TOKEN_ARGS})"))


@cache
def _compile_token_kernels() -> None:
    """Compile (or load from Numba's cache) a generated token's attention kernels, once
    a process, with its first prompt: under a front end's compile notice, not mid-answer
    (the first time a conversation passes LONG_CONTEXT, say); for these signatures,
    before a token step's compiling makes others, which a later run would load but not
    these."""
    for kernel, signature in _TOKEN_KERNELS:
        kernel.compile(signature)


def _token_parts(t: int) -> int:
    """Parts a generated token's attention over t cached tokens splits into across the
    threads (_attend_token): one below LONG_CONTEXT, at most one per LONG_CONTEXT / 2."""
    return min(get_num_threads(), t // (LONG_CONTEXT // 2)) if t >= LONG_CONTEXT else 1


@cache
def _token_step(path: str, kinds: tuple[tuple[str, bool], ...]):
    """A layer's pass for one generated token, as one jitted call: its products
    (quant.times; kinds: each weight's format and whether its rows split across
    threads, literals in the closure, with the SIMD path, which key Numba's cache),
    RoPE, the cache's new row, attention, routing and SwiGLU. Python's glue between
    them cost more than the products of a small model's layer (SmolLM2: 60 us a layer
    beside 150), and of a big model's from cold caches (2-layer Mixtral: 1.5 ms of a
    23 ms token)."""
    (fq, pq), (fk, pk), (fv, pv), (fo, po), (fg, pg), (fu, pu), (fd, pd) = kinds

    @njit(cache=True)
    def step(x, attn, ffn, norms, k_cache, v_cache, pos, rotation, eps, parts, router, k):
        """x (n_embd,) after the layer at position pos, whose keys and values go to row
        pos of k_cache and v_cache (n_ctx, n_kv, hd), attention split in `parts` across
        threads (1: on this one); with the experts chosen, best first, and their weights
        (a dense layer, whose router has no rows: expert 0, weight 1)."""
        wq, wk, wv, wo = attn
        n_kv, hd = k_cache.shape[1], k_cache.shape[2]
        h = rms_norm(x.reshape(1, -1), norms[0], eps)[0]
        q = quant.times(fq, path, wq, h, pq).reshape(1, -1, hd)
        keys = quant.times(fk, path, wk, h, pk).reshape(1, n_kv, hd)
        positions = np.full(1, pos)
        _rotate(q.view(np.complex64), rotation, positions)
        _rotate(keys.view(np.complex64), rotation, positions)
        _put(k_cache[pos], keys[0])
        _put(v_cache[pos], quant.times(fv, path, wv, h, pv))
        scale = np.float32(1.0 / np.sqrt(hd))
        keys, values = k_cache[:pos + 1], v_cache[:pos + 1]
        a = (_attend_token(q[0], keys, values, scale, parts) if parts > 1
             else _attend_short(q[0], keys, values, scale))
        x = x + quant.times(fo, path, wo, a.reshape(-1), po)

        h = rms_norm(x.reshape(1, -1), norms[1], eps)[0]
        experts, weights = (_top_experts(router, h, k) if len(router)
                            else (np.zeros(1, np.int64), np.ones(1, np.float32)))
        gates, ups, downs = ffn
        out = np.zeros_like(x)
        for j in range(len(experts)):
            e = experts[j]
            g = quant.times(fg, path, gates[e], h, pg).reshape(1, -1)
            u = quant.times(fu, path, ups[e], h, pu).reshape(1, -1)
            out += weights[j] * quant.times(fd, path, downs[e], _swiglu_serial(g, u)[0], pd)
        return x + out, experts, weights
    return step


def _layer_step(layer: Layer, path: str):
    """(kernel, attention's blocks, the experts' blocks, norms, router) of the layer's
    token step on SIMD path `path`, or None (see Model._token_steps)."""
    attn = [quant.operand(t) for t in (layer.wq, layer.wk, layer.wv, layer.wo)]
    ffn = [[quant.operand(getattr(e, role)) for e in layer.experts]
           for role in ("gate", "up", "down")]
    if None in attn + [o for role in ffn for o in role] or any(
            len({o[:2] for o in role}) > 1 for role in ffn):
        return None
    kinds = tuple(o[:2] for o in attn) + tuple(role[0][:2] for role in ffn)
    router = (layer.router if layer.router is not None
              else np.empty((0, layer.attn_norm.size), np.float32))
    return (_token_step(path, kinds), tuple(o[2] for o in attn),
            tuple(tuple(o[2] for o in role) for role in ffn),
            (layer.attn_norm, layer.ffn_norm), router)


@njit(cache=True)
def _top_experts(router, h, k):
    """route() for one token: softmax over the experts, the k best (the lower number
    first among equals, as a stable sort), their weights renormalised."""
    n = len(router)
    logits = np.empty(n, np.float32)
    for e in range(n):
        acc = np.float32(0.0)
        for i in range(len(h)):
            acc += router[e, i] * h[i]
        logits[e] = acc
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    experts, weights = np.empty(k, np.int64), np.empty(k, np.float32)
    taken = np.zeros(n, np.bool_)
    for j in range(k):
        best = -1
        for e in range(n):
            if not taken[e] and (best < 0 or probs[e] > probs[best]):
                best = e
        taken[best] = True
        experts[j], weights[j] = best, probs[best]
    return experts, weights / weights.sum()


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int) -> np.ndarray:
    """Causal grouped-query attention.

    q (n, n_head, hd) at positions start..start+n-1; k, v (T, n_head_kv, hd) for
    positions 0..T-1 with T = start + n. Query head h reads key/value head h // group.
    Returns (n, n_head * hd). A prompt runs in blocks of QUERY_BLOCK queries per key/value
    head, split over the threads; each block reads only the keys up to its last query
    (a 256-token prompt: 5/8 of the work). A generated token over LONG_CONTEXT or more
    cached tokens runs _attend_token, its cached tokens split over the threads; one with
    less than SHORT_ATTENTION products, _attend_short; the rest, numpy's products.
    """
    n, n_head, hd = q.shape
    t, n_kv, _ = k.shape
    group = n_head // n_kv
    scale = np.float32(1.0 / np.sqrt(hd))
    if n == 1:  # a generated token: no future keys
        if t >= LONG_CONTEXT:
            out = _attend_token(q[0], k, v, scale, _token_parts(t))
        elif n_head * t * hd < SHORT_ATTENTION:
            out = _attend_short(q[0], k, v, scale)
        else:  # every head at once
            scores = q[0].reshape(n_kv, group, hd) @ k.transpose(1, 2, 0)  # (n_kv, group, T)
            scores *= scale
            out = softmax(scores) @ v.transpose(1, 0, 2)
        return out.reshape(1, n_head * hd)

    _compile_token_kernels()
    out = np.empty((n, n_head, hd), np.float32)
    # -inf where a query's key lies in its future, in a block's last QUERY_BLOCK keys
    future = np.triu(np.full((QUERY_BLOCK, QUERY_BLOCK), -np.inf, np.float32), 1)

    def attend(blocks):
        for h, a in blocks:  # key/value head h, queries a..b-1
            b = min(a + QUERY_BLOCK, n)
            end = start + b
            heads = slice(h * group, (h + 1) * group)
            # the group's heads stacked, one matrix product for all of them (1.2-1.4x
            # over a batch of products): rows are (query, head) pairs
            scores = q[a:b, heads].reshape(-1, hd) @ k[:end, h].T  # ((b - a) group, end)
            scores *= scale
            scores.reshape(b - a, group, end)[:, :, start + a:] += future[:b - a, None, :b - a]
            out[a:b, heads] = (softmax(scores) @ v[:end, h]).reshape(b - a, group, hd)

    # the longest blocks first: run_split deals them out in turn, evenly
    threads.run_split(attend, [(h, a) for a in reversed(range(0, n, QUERY_BLOCK))
                               for h in range(n_kv)])
    return out.reshape(n, n_head * hd)


def feed_forward(e: Expert, x: np.ndarray) -> np.ndarray:
    """SwiGLU: down(silu(gate x) * up x); gate and up share one 8-bit quantization of x
    (they read the same input)."""
    gate, up = quant.matmul_multi([e.gate, e.up], x)
    return quant.matmul(e.down, swiglu(gate, up))


def route(router: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mixtral's router: softmax over all experts, top k, renormalised.
    Returns experts (n, k) best first and their weights (n, k)."""
    probs = softmax(x @ router.T)
    experts = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    weights = np.take_along_axis(probs, experts, axis=1)
    return experts, weights / weights.sum(axis=1, keepdims=True)


def moe(layer: Layer, x: np.ndarray, experts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each chosen expert runs once, on the tokens routed to it."""
    out = np.zeros_like(x)
    for e in np.unique(experts):
        rows, slot = np.nonzero(experts == e)
        _add_rows(out, rows, weights[rows, slot], feed_forward(layer.experts[e], x[rows]))
    return out


@njit(cache=True)
def _add_rows(out: np.ndarray, rows: np.ndarray, weights: np.ndarray, y: np.ndarray) -> None:
    """out[rows[i]] += weights[i] y[i]: an expert's outputs back to their tokens (numpy's
    fancy-indexed += gathers and scatters both operands)."""
    for i in range(len(rows)):
        row, w = out[rows[i]], weights[i]
        for j in range(len(row)):
            row[j] += w * y[i, j]


class Model:
    def __init__(self, config: ModelConfig, weights: Weights, file: GGUFFile | None = None,
                 n_ctx: int | None = None):
        self.config, self.weights, self.file = config, weights, file
        self.n_ctx = n_ctx or min(config.n_ctx_train, DEFAULT_N_CTX)
        self._rope = Rope(config.rope_dim, config.rope_base, self.n_ctx)
        self._steps = {}  # (kernel path, threads > 1) -> _token_steps

    @classmethod
    def load(cls, path: str | os.PathLike, n_ctx: int | None = None) -> Model:
        """Open a GGUF file (memory-mapped: weights are not copied), and have malloc keep
        the forward pass's freed temporaries for the next pass (heap.py)."""
        heap.keep_freed_memory()
        f = GGUFFile(path)
        config = ModelConfig.from_gguf(f)
        return cls(config, load_weights(f, config), f, n_ctx)

    def new_cache(self, n_ctx: int | None = None) -> KVCache:
        c = self.config
        n_ctx = n_ctx or self.n_ctx
        if n_ctx > len(self._rope.rotation):
            self._rope = Rope(c.rope_dim, c.rope_base, n_ctx)
        return KVCache(c.n_layer, n_ctx, c.n_head_kv, c.head_dim)

    def forward(self, tokens, cache: KVCache, *, n_expert_used: int | None = None,
                observer: RouteObserver | None = None, logits_all: bool = False) -> np.ndarray:
        """Run `tokens` at positions cache.length.. and append them to the cache.

        Returns float32 logits of the last token (n_vocab,), or of every token
        (n, n_vocab) with logits_all.
        """
        c = self.config
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(tokens) == 0:
            raise ValueError("no tokens to run")
        if tokens.min() < 0 or tokens.max() >= c.n_vocab:
            raise ValueError(f"token id out of range 0..{c.n_vocab - 1}")
        cache.check_fits(len(tokens))
        k = n_expert_used or c.n_expert_used
        if c.is_moe and not 0 < k <= c.n_expert:
            raise ValueError(f"experts per token must be in 1..{c.n_expert}, not {k}")
        logits = [self._step(tokens[i:i + N_BATCH], cache, k, observer, logits_all)
                  for i in range(0, len(tokens), N_BATCH)]
        return np.concatenate(logits) if logits_all else logits[-1][-1]

    def _token_steps(self) -> list:
        """Per layer, (kernel, attention's blocks, the experts' blocks, norms, router) of
        its jitted token step (_token_step), or None where a generated token takes the
        Python path: weights with no SIMD kernel (quant.operand), or experts of mixed
        formats."""
        key = (quant.kernel_path(), get_num_threads() > 1)
        if key not in self._steps:
            self._steps[key] = [_layer_step(layer, key[0]) for layer in self.weights.layers]
        return self._steps[key]

    def _step_args(self, step, cache: KVCache, i: int, x: np.ndarray, pos: int,
                   k: int) -> tuple:
        """Layer i's token step's arguments, for token x (n_embd,) at position pos and
        k experts a token."""
        _, attn, ffn, norms, router = step
        return (x, attn, ffn, norms, cache.k[i], cache.v[i], pos, self._rope.rotation,
                self.config.norm_eps, _token_parts(pos + 1), router, k)

    def _step(self, tokens: np.ndarray, cache: KVCache, k: int,
              observer: RouteObserver | None, logits_all: bool) -> np.ndarray:
        c, w = self.config, self.weights
        n, start = len(tokens), cache.length
        positions = np.arange(start, start + n)
        end = start + n
        x = quant.get_rows(w.token_embd, tokens)
        last = len(w.layers) - 1 if not logits_all and observer is None else -1
        steps = self._token_steps()
        if n > 1:  # compiled (or loaded) with a prompt, not mid-answer
            _compile_token_kernels()
            for i, step in enumerate(steps):
                if step is not None and not step[0].overloads:
                    step[0].compile(tuple(numba.typeof(a) for a in
                                          self._step_args(step, cache, i, x[0], 0, k)))
        for i, layer in enumerate(w.layers):
            if n == 1 and steps[i] is not None:
                x, experts, weights = steps[i][0](*self._step_args(steps[i], cache, i, x[0],
                                                                   start, k))
                x = x[None]
                if observer is not None and layer.router is not None:
                    observer.on_route(i, positions, experts[None], weights[None])
                continue
            h = rms_norm(x, layer.attn_norm, c.norm_eps)
            every_q = i != last or n == 1  # queries of every token, with the keys and values
            projections = [layer.wq, layer.wk, layer.wv] if every_q else [layer.wk, layer.wv]
            *q, keys, values = quant.matmul_multi(projections, h)
            cache.k[i, start:end] = self._rope(keys.reshape(n, c.n_head_kv, c.head_dim),
                                               positions)
            cache.v[i, start:end] = values.reshape(n, c.n_head_kv, c.head_dim)
            if i == last:
                # Only the last token's logits are wanted, and every token's keys and
                # values are cached now: the rest runs on that token alone (llama.cpp
                # does the same; on a prompt it saves most of the last layer).
                x, h, positions = x[-1:], h[-1:], positions[-1:]
            q = q[0] if every_q else quant.matmul(layer.wq, h)
            q = self._rope(q.reshape(len(h), c.n_head, c.head_dim), positions)
            a = attention(q, cache.k[i, :end], cache.v[i, :end], positions[0])
            x = x + quant.matmul(layer.wo, a)

            h = rms_norm(x, layer.ffn_norm, c.norm_eps)
            if layer.router is None:
                x = x + feed_forward(layer.experts[0], h)
                continue
            experts, weights = route(layer.router, h, k)
            if observer is not None:
                observer.on_route(i, positions, experts, weights)
            x = x + moe(layer, h, experts, weights)
        cache.append(tokens)
        if not logits_all:
            x = x[-1:]
        return quant.matmul(w.output, rms_norm(x, w.output_norm, c.norm_eps))
