"""Perplexity against a direct numpy computation of the same windows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference import Reference

import mixlocal.quant
from mixlocal.model import Model
from mixlocal.perplexity import perplexity, window_nll, windows
from mixlocal.synthetic import PRESETS, write_model


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("ppl") / "moe.gguf", PRESETS["tiny-moe"], "q8_0")


def direct_perplexity(logits_of, tokens, n_ctx, bos):
    """llama.cpp's loop written out: every window, BOS first, score its second half."""
    nll = []
    for start in range(0, len(tokens) - n_ctx + 1, n_ctx):
        window = list(tokens[start:start + n_ctx])
        window[0] = bos
        logits = np.asarray(logits_of(window), np.float64)
        for j in range(n_ctx // 2, n_ctx - 1):
            p = np.exp(logits[j] - logits[j].max())
            nll.append(-math.log(p[window[j + 1]] / p.sum()))
    nll = np.array(nll)
    ppl = math.exp(nll.mean())
    return ppl, ppl * nll.std() / math.sqrt(len(nll) - 1), len(nll)


@pytest.mark.parametrize("k", [2, 1, 3])
def test_equals_direct_numpy(tiny_moe, k, monkeypatch):
    """The same windows scored by hand from the model's own logits (each window from an
    empty cache), and from the float64 reference implementation."""
    # Float kernels, so the comparison with the float64 reference can be tight: the
    # 8-bit activation products move a tiny random model's perplexity by about 1%.
    monkeypatch.setattr(mixlocal.quant, "kernel_path", lambda: "plain")
    tokens = np.random.default_rng(k).integers(3, 512, size=53)  # 3 windows of 16, 5 left over
    model = Model.load(tiny_moe)
    events = list(perplexity(model, tokens, 16, bos=1, n_expert_used=k))
    assert [(e.window, e.n_windows) for e in events] == [(1, 3), (2, 3), (3, 3)]
    assert [e.count for e in events] == [7, 14, 21]
    final = events[-1]

    def own_logits(window):
        return model.forward(window, model.new_cache(16), n_expert_used=k, logits_all=True)

    ppl, stderr, count = direct_perplexity(own_logits, tokens, 16, 1)
    assert count == 21
    assert final.ppl == pytest.approx(ppl, rel=1e-9)
    assert final.stderr == pytest.approx(stderr, rel=1e-9)

    ref = Reference(tiny_moe)
    ppl, stderr, _ = direct_perplexity(lambda w: ref.logits(w, n_expert_used=k), tokens, 16, 1)
    assert final.ppl == pytest.approx(ppl, rel=1e-3)
    assert final.stderr == pytest.approx(stderr, rel=5e-3)


class Uniform:
    """Equal logits over n_vocab tokens: perplexity exactly n_vocab."""

    def __init__(self, n_vocab):
        self.n_vocab = n_vocab

    def new_cache(self, n_ctx):
        return _Cache()

    def forward(self, tokens, cache, *, n_expert_used=None, logits_all=False):
        return np.zeros((len(tokens), self.n_vocab), np.float32)


class _Cache:
    def truncate(self, n):
        pass


def test_uniform_model_perplexity_is_vocab_size():
    final = list(perplexity(Uniform(100), list(range(40)), 8))[-1]
    assert final.count == 5 * 3
    assert final.ppl == pytest.approx(100, rel=1e-12)
    assert final.stderr == 0.0


def test_window_nll_by_hand():
    logits = np.zeros((4, 3), np.float32)
    logits[2] = [0.0, math.log(3.0), 0.0]  # p = 1/5, 3/5, 1/5
    nll = window_nll(logits, np.array([9, 9, 9, 1]))
    assert nll.tolist() == pytest.approx([-math.log(3 / 5)])


def test_windows():
    w = windows(list(range(10, 31)), 8, bos=1)
    assert w.tolist() == [[1, *range(11, 18)], [1, *range(19, 26)]]
    assert windows(list(range(10, 18)), 8, bos=None)[0].tolist() == list(range(10, 18))
    with pytest.raises(ValueError, match="fewer than one window of 8"):
        windows(list(range(7)), 8, bos=1)
    with pytest.raises(ValueError, match="too small"):
        windows(list(range(7)), 2, bos=1)
