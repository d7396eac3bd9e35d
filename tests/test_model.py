"""The forward pass against the float64 reference, the KV cache, and expert sparsity."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY
from reference import Reference

import mixlocal.quant
from mixlocal import model as model_module
from mixlocal.gguf_file import GGUFFile
from mixlocal.kv_cache import ContextOverflowError
from mixlocal.model import (LONG_CONTEXT, SHORT_ATTENTION, Model, _attend_token,
                            _swiglu_parallel, _swiglu_serial, attention)
from mixlocal.synthetic import write_model

# With float weights every product is float32: measured errors are ~2e-6 of the
# logits' spread. With quantized weights a product on one row (a decoded token, an
# expert that got one prompt token, the last token's logits) quantizes its activations
# to 8 bits, as llama.cpp does: each such product is off by 1-2% of its spread, and two
# layers compound that to 5-11% (measured).
FLOAT_TOL = 1e-4
QUANT_TOL = 0.15

PROMPT = [1, 17, 300, 42, 42, 99, 260, 5, 311, 77, 8, 150]

FLOAT_CASES = [
    ("moe", "f32", "merged"),
    ("moe", "f16", "per_expert"),
    ("moe_tied", "f32", "merged"),
    ("dense", "f16", "merged"),
    ("partial_rope", "f32", "merged"),
]
QUANT_CASES = [
    ("moe", "q8_0", "per_expert"),
    ("moe_tied", "q4_0", "merged"),
    ("dense", "q8_0", "merged"),
    ("kquant", "q4_k_m", "merged"),
    ("kquant", "q4_k_m", "per_expert"),
    ("kquant", "q2_k", "merged"),
]


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / want.std())


class Recorder:
    def __init__(self):
        self.calls = []

    def on_route(self, layer, positions, experts, weights):
        self.calls.append((layer, positions.copy(), experts.copy(), weights.copy()))

    def routes(self) -> dict[int, np.ndarray]:
        """{layer: experts (n, k)} in position order, over all calls."""
        by_layer: dict[int, list] = {}
        for layer, _, experts, _ in self.calls:
            by_layer.setdefault(layer, []).append(experts)
        return {layer: np.concatenate(e) for layer, e in by_layer.items()}


def run_prompt(model, observer=None):
    return model.forward(PROMPT, model.new_cache(), logits_all=True, observer=observer)


def run_decode(model, observer=None):
    cache = model.new_cache()
    logits = np.stack([model.forward([t], cache, observer=observer) for t in PROMPT])
    assert cache.length == len(PROMPT) and cache.tokens == PROMPT
    return logits


@pytest.mark.parametrize("kind,quant,layout", FLOAT_CASES)
def test_float_weights_match_reference(tiny_model, kind, quant, layout):
    path = tiny_model(kind, quant, layout)
    model = Model.load(path)
    want = Reference(path).logits(PROMPT)
    prompt = run_prompt(model)
    assert prompt.shape == want.shape and prompt.dtype == np.float32
    assert _rel_err(prompt, want) < FLOAT_TOL
    assert _rel_err(run_decode(model), want) < FLOAT_TOL
    assert _rel_err(model.forward(PROMPT, model.new_cache()), want[-1]) < FLOAT_TOL


@pytest.mark.parametrize("run", [run_prompt, run_decode], ids=["prompt", "decode"])
@pytest.mark.parametrize("kind,quant,layout", QUANT_CASES)
def test_quantized_weights_stay_close_to_reference(tiny_model, kind, quant, layout, run):
    path = tiny_model(kind, quant, layout)
    model = Model.load(path)
    want_routes: dict[int, np.ndarray] = {}
    want = Reference(path).logits(PROMPT, routes=want_routes)
    rec = Recorder()
    got = run(model, rec)
    # 8-bit activations can tip a near tie between two experts; from that token on the
    # sequence legitimately diverges, so only the tokens before it are compared.
    same = len(PROMPT)
    for layer, experts in rec.routes().items():
        differ = np.any(np.sort(experts) != np.sort(want_routes[layer]), axis=1)
        same = min(same, int(np.argmax(differ)) if differ.any() else same)
    assert same >= 4
    got, want = got[:same], want[:same]
    assert _rel_err(got, want) < QUANT_TOL
    # The most likely token agrees, unless the reference's best two are a near tie.
    top = got.argmax(axis=1)
    margin = want.max(axis=1) - want[np.arange(same), top]
    assert np.all((top == want.argmax(axis=1)) | (margin < 0.1 * want.std()))


def test_prompt_in_pieces_matches_one_pass(tiny_model):
    model = Model.load(tiny_model("moe", "f32"))
    whole = model.forward(PROMPT, model.new_cache(), logits_all=True)
    cache = model.new_cache()
    pieces = [model.forward(PROMPT[:5], cache, logits_all=True),
              model.forward(PROMPT[5:], cache, logits_all=True)]
    assert _rel_err(np.concatenate(pieces), whole) < FLOAT_TOL
    # Run for its last logits only, the last layer skips the other tokens' outputs
    # but still caches every token's keys and values.
    cache = model.new_cache()
    assert _rel_err(model.forward(PROMPT[:5], cache), whole[4]) < FLOAT_TOL
    assert _rel_err(model.forward(PROMPT[5:], cache, logits_all=True), whole[5:]) < FLOAT_TOL


def test_prompt_longer_than_a_batch(tiny_model, monkeypatch):
    import mixlocal.model as model_module
    model = Model.load(tiny_model("moe", "f32"))
    whole = model.forward(PROMPT, model.new_cache(), logits_all=True)
    monkeypatch.setattr(model_module, "N_BATCH", 5)
    assert _rel_err(model.forward(PROMPT, model.new_cache(), logits_all=True), whole) < FLOAT_TOL


@pytest.mark.parametrize("k", [1, 3, 8])
def test_experts_per_token_override(tiny_model, k):
    path = tiny_model("moe", "f32")
    model = Model.load(path)
    want = Reference(path).logits(PROMPT, k)
    got = model.forward(PROMPT, model.new_cache(), logits_all=True, n_expert_used=k)
    assert _rel_err(got, want) < FLOAT_TOL
    with pytest.raises(ValueError, match="experts per token"):
        model.forward(PROMPT, model.new_cache(), n_expert_used=9)


def test_both_layouts_give_identical_logits(tiny_model):
    merged = Model.load(tiny_model("kquant", "q4_k_m", "merged"))
    split = Model.load(tiny_model("kquant", "q4_k_m", "per_expert"))
    for model in (merged, split):
        model.logits = model.forward(PROMPT, model.new_cache(), logits_all=True)
    np.testing.assert_array_equal(merged.logits, split.logits)


def test_observer_sees_every_moe_layer(tiny_model):
    model = Model.load(tiny_model("moe", "f32"))
    rec = Recorder()
    cache = model.new_cache()
    model.forward(PROMPT[:4], cache, observer=rec)
    model.forward(PROMPT[4:5], cache, observer=rec)
    layers = [call[0] for call in rec.calls]
    assert layers == [0, 1, 0, 1]
    layer, positions, experts, weights = rec.calls[2]
    np.testing.assert_array_equal(positions, [4])
    assert experts.shape == weights.shape == (1, 2)
    assert len(set(experts[0])) == 2 and weights[0, 0] >= weights[0, 1]
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)


def test_unchosen_experts_are_never_read(tiny_model, tmp_path):
    """Experts no token chose are filled with NaN: the logits stay finite and equal."""
    path = tmp_path / "nan-experts.gguf"
    shutil.copy(tiny_model("moe", "f32"), path)
    model = Model.load(path)
    prompt = PROMPT[:3]
    rec = Recorder()
    want = model.forward(prompt, model.new_cache(), logits_all=True, observer=rec)
    chosen = {layer: set(experts.ravel().tolist()) for layer, _, experts, _ in rec.calls}
    unchosen = {layer: sorted(set(range(8)) - e) for layer, e in chosen.items()}
    assert all(unchosen.values())  # 3 tokens x 2 experts leave at least 2 of 8 out
    del model

    infos = GGUFFile(path).tensors
    for layer, experts in unchosen.items():
        for role in ("gate", "up", "down"):
            info = infos[f"blk.{layer}.ffn_{role}_exps.weight"]
            w = np.memmap(path, np.float32, "r+", offset=info.offset, shape=info.shape)
            w[experts] = np.nan
            w.flush()
    model = Model.load(path)
    got = model.forward(prompt, model.new_cache(), logits_all=True)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)
    cache = model.new_cache()
    for t in prompt:  # the one-token path too
        assert np.isfinite(model.forward([t], cache)).all()


def test_context_overflow_and_rollback(tiny_model):
    model = Model.load(tiny_model("moe", "f32"))
    cache = model.new_cache(n_ctx=8)
    first = model.forward(PROMPT[:6], cache)
    with pytest.raises(ContextOverflowError, match="does not fit the context of 8"):
        model.forward(PROMPT[6:9], cache)
    assert cache.length == 6  # nothing was appended
    model.forward(PROMPT[6:8], cache)
    cache.truncate(5)
    assert _rel_err(model.forward(PROMPT[5:6], cache), first) < FLOAT_TOL
    with pytest.raises(ValueError):
        cache.truncate(7)


def test_bad_tokens_are_refused(tiny_model):
    model = Model.load(tiny_model("moe", "f32"))
    with pytest.raises(ValueError, match="out of range"):
        model.forward([1, 400], model.new_cache())
    with pytest.raises(ValueError, match="no tokens"):
        model.forward([], model.new_cache())


def test_cache_longer_than_the_default_context(tiny_model):
    path = tiny_model("dense", "f32")
    model = Model.load(path, n_ctx=4)
    cache = model.new_cache(n_ctx=len(PROMPT))
    got = model.forward(PROMPT, cache, logits_all=True)
    assert _rel_err(got, Reference(path).logits(PROMPT)) < FLOAT_TOL


def test_smollm2_matches_reference(smollm2_path):
    """A real model: 9 query / 3 key-value heads, rope base 1e5, tied Q8_0 output, Q4_1."""
    from mixlocal.tokenizer import Tokenizer

    model = Model.load(smollm2_path)
    tokenizer = Tokenizer.from_gguf(model.file)
    ids = tokenizer.encode("The capital of France is", add_bos=False)
    want = Reference(smollm2_path).logits(ids)

    # Quantized weights take 8-bit activations on both the prompt path and the
    # one-token path (as llama.cpp's do); the error compounds over 30 layers, each
    # product off by ~2% of its spread. Both must stay near the float reference and
    # rank the same first.
    batched = model.forward(ids, model.new_cache(), logits_all=True)
    cache = model.new_cache()
    decoded = np.stack([model.forward([t], cache) for t in ids])
    for got in (batched, decoded):
        assert _rel_err(got, want) < 0.25
        np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))
    assert tokenizer.decode([int(want[-1].argmax())]) == " Paris"


def _dense_causal_attention(q, k, v, start):
    """The float64 reference: every query against every key up to its own position."""
    n, n_head, hd = q.shape
    n_kv = k.shape[1]
    want = np.empty((n, n_head, hd))
    for h in range(n_head):
        scores = q[:, h].astype(np.float64) @ k[:, h * n_kv // n_head].T / np.sqrt(hd)
        scores[np.arange(start + n)[None, :] > np.arange(start, start + n)[:, None]] = -np.inf
        weights = np.exp(scores - scores.max(1, keepdims=True))
        want[:, h] = weights / weights.sum(1, keepdims=True) @ v[:, h * n_kv // n_head]
    return want.reshape(n, -1)


def _qkv(n, start, seed, n_head=8, n_kv=2, hd=16):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, n_head, hd)).astype(np.float32)
    k, v = (rng.standard_normal((start + n, n_kv, hd)).astype(np.float32) for _ in range(2))
    return q, k, v


_SMALL, _MIXTRAL = (8, 2, 16), (32, 8, 128)  # heads, key/value heads, head size


@pytest.mark.parametrize("n,start,heads,path", [
    (1, 40, _SMALL, "short"), (1, 40, _MIXTRAL, "numpy"), (7, 0, _SMALL, "prompt"),
    (150, 0, _SMALL, "prompt"), (150, 37, _SMALL, "prompt"), (1, 300, _SMALL, "long"),
    (1, 1000, _SMALL, "long")])
def test_attention_in_query_blocks_matches_a_dense_causal_softmax(n, start, heads, path):
    """A prompt's attention runs in blocks of QUERY_BLOCK queries, each against the keys
    up to its last query (blocks of 64: 150 queries take three); a generated token's
    jitted on one thread below SHORT_ATTENTION products, through numpy above, and from
    LONG_CONTEXT cached tokens on in the parallel kernel: float64 reference."""
    t = start + n
    taken = ("prompt" if n > 1 else "long" if t >= LONG_CONTEXT
             else "short" if heads[0] * heads[2] * t < SHORT_ATTENTION else "numpy")
    assert taken == path
    q, k, v = _qkv(n, start, n + start, *heads)
    got = attention(q, k, v, start)
    np.testing.assert_allclose(got, _dense_causal_attention(q, k, v, start), rtol=0, atol=1e-5)


def test_token_kernels_compile_with_a_prompt(tmp_path):
    """A generated token's attention kernels compile (or load from Numba's cache) with a
    prompt, under a front end's compile notice, not mid-answer (when a conversation first
    passes LONG_CONTEXT, say): a fresh cache, a prompt, then a short-context token and a
    long-context one compile nothing. Nor do they compile Numba's message for arrays of
    mismatched shapes (array assignment would: seconds of a first start)."""
    code = ("import numpy as np\n"
            "from numba.core import event\n"
            "compiles = event.RecordingListener()\n"
            "event.register('numba:compile', compiles)\n"
            "from mixlocal.jit_notice import on_first_compile\n"
            "from mixlocal.model import LONG_CONTEXT, attention\n"
            "q, kv = np.ones((4, 8, 16), np.float32), np.ones((4, 2, 16), np.float32)\n"
            "attention(q, kv, kv, 0)\n"
            "long = np.ones((LONG_CONTEXT, 2, 16), np.float32)\n"
            "compiled = []\n"
            "with on_first_compile(lambda: compiled.append(1)):\n"
            "    attention(q[:1], kv[:5], kv[:5], 4)\n"
            "    attention(q[:1], long, long, LONG_CONTEXT - 1)\n"
            "names = [getattr(ev.data['dispatcher'].py_func, '__qualname__', '')\n"
            "         for _, ev in compiles.buffer if ev.is_start]\n"
            "print(len(compiled), sum('raise_with_shape' in name for name in names))\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["0", "0"]


def _decode_both_ways(path, monkeypatch, split=False):
    """Logits, cache and routes of PROMPT's last tokens decoded one by one after its
    first five, with the token steps (model._token_step) and on the Python path; with
    split, every product's rows split across threads (the parallel kernels, which any
    thread count runs)."""
    runs = []
    if split:
        monkeypatch.setattr(mixlocal.quant, "_parallel", lambda nbytes: True)
    for jitted in (True, False):
        with monkeypatch.context() as m:
            if not jitted:
                m.setattr(mixlocal.quant, "operand", lambda w: None)
            model = Model.load(path)
            cache = model.new_cache(64)
            model.forward(PROMPT[:5], cache)
            steps = model._token_steps()
            assert all(s is not None for s in steps) == jitted
            assert all(s[0].overloads for s in steps if s is not None)  # no compile mid-answer
            routes = Recorder()
            logits = np.stack([model.forward([t], cache, observer=routes) for t in PROMPT[5:]])
            runs.append((logits, cache, routes))
    return runs


@pytest.mark.parametrize("quant,split", [("q4_0", False), ("q4_k_m", False),
                                         ("q4_k_m", True)])
def test_dense_token_step_matches_the_python_path(tmp_path, monkeypatch, quant, split):
    """A dense layer's generated token runs as one jitted call (model._token_step), its
    products through quant.times, on the calling thread or (split) across threads;
    compiled with the prompt, it gives the Python path's logits and cache rows, with
    attention in one part and, past LONG_CONTEXT (lowered here), split across threads.
    Q4_0 reads its blocks eight at a time; the q4_k_m mix has Q4_K, Q5_K, Q6_K and
    Q8_0."""
    config = dataclasses.replace(TINY["kquant"], n_expert=0, n_expert_used=0)
    path = write_model(tmp_path / f"dense-{quant}.gguf", config, quant)
    monkeypatch.setattr(model_module, "LONG_CONTEXT", 8)
    (got, got_cache, _), (want, want_cache, _) = _decode_both_ways(path, monkeypatch, split)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(got_cache.k, want_cache.k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_cache.v, want_cache.v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,quant,split", [("moe", "q8_0", False),
                                              ("kquant", "q4_k_m", False),
                                              ("kquant", "q4_k_m", True)])
def test_moe_token_step_matches_the_python_path(tiny_model, monkeypatch, kind, quant, split):
    """A MoE layer's generated token in one jitted call routes it as the Python path
    does (same experts, weights within 1e-5) and gives its logits within a percent of
    their spread: the router's float32 sums run in another order than BLAS's, and a
    change in the last bit can turn an 8-bit activation's rounding downstream."""
    runs = _decode_both_ways(tiny_model(kind, quant), monkeypatch, split)
    (got, _, got_routes), (want, _, want_routes) = runs
    assert len(got_routes.calls) == len(want_routes.calls) > 0
    for (layer, positions, experts, weights), want_call in zip(got_routes.calls,
                                                                 want_routes.calls):
        assert (layer, positions.tolist(), experts.tolist()) == (
            want_call[0], want_call[1].tolist(), want_call[2].tolist())
        np.testing.assert_allclose(weights, want_call[3], atol=1e-5)
    assert np.abs(got - want).max() <= 0.01 * np.ptp(want)


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_long_context_token_attention_merges_its_parts(parts):
    """The cached tokens split into parts (one per thread), each with its own maximum
    score, merged into one softmax: the same result for any number of parts."""
    q, k, v = _qkv(1, 700, parts, n_head=32, n_kv=8, hd=128)
    got = _attend_token(q[0], k, v, np.float32(1 / np.sqrt(128)), parts).reshape(1, -1)
    np.testing.assert_allclose(got, _dense_causal_attention(q, k, v, 700), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kernel", [_swiglu_serial, _swiglu_parallel], ids=["serial", "parallel"])
def test_swiglu_against_float64(kernel):
    """The jitted silu(gate) * up (its own vectorizable exp) within 4 ulps of float64,
    over the normal range, exp's clamps and beyond; finite wherever the true value is.
    Between gates of -88.7 and -88.3 exp's overflow comes early (to -0 where the true
    value is under 1e-36): hence the absolute tolerance."""
    rng = np.random.default_rng(12)
    gate = np.concatenate([rng.standard_normal(4096) * 4, np.linspace(-200, 200, 4000),
                           [0.0, -0.0, 1e-30, -1e-30, 87, -87, 88.5, -88.5, 1e4, -1e4,
                            -3e38, 0.5]]).astype(np.float32)
    up = rng.standard_normal(gate.size).astype(np.float32)
    got = kernel(gate.reshape(2, -1), up.reshape(2, -1)).reshape(-1)
    g, u = gate.astype(np.float64), up.astype(np.float64)
    with np.errstate(over="ignore"):
        want = g / (1 + np.exp(-g)) * u
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=4 * 2.0 ** -23, atol=1e-35)
