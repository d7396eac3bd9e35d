"""Sampling filters against hand computations, and the generation loop."""

from __future__ import annotations

import numpy as np
import pytest

from mixlocal.generate import ContextOverflowError, generate
from mixlocal.model import Model
from mixlocal.sampling import (GREEDY, Sampler, SamplerSettings, min_p, repeat_penalty,
                               top_k, top_p)

LOGITS = np.array([2.0, -1.0, 0.5, 3.0, -2.0, 1.0], np.float32)


def test_repeat_penalty_divides_positive_and_multiplies_negative():
    got = repeat_penalty(LOGITS, [0, 1, 1, 5], 2.0)
    np.testing.assert_array_equal(got, [1.0, -2.0, 0.5, 3.0, -2.0, 0.5])
    np.testing.assert_array_equal(LOGITS[0], 2.0)  # the input is left alone


def test_top_k_keeps_the_best_in_order():
    ids, logits = top_k(LOGITS, 3)
    np.testing.assert_array_equal(ids, [3, 0, 5])
    np.testing.assert_array_equal(logits, [3.0, 2.0, 1.0])
    assert list(top_k(LOGITS, 0)[0]) == [3, 0, 5, 2, 1, 4]


@pytest.mark.parametrize("ties", [False, True])
def test_top_k_is_a_stable_sort_s_prefix(ties):
    """The heap selection keeps what a stable sort by falling logit puts first (the
    lower id first among equals), for any k, NaN left out."""
    rng = np.random.default_rng(5)
    for _ in range(100):
        n, k = int(rng.integers(1, 2000)), int(rng.integers(1, 100))
        logits = (rng.integers(-4, 4, n) if ties else rng.standard_normal(n)).astype(np.float32)
        logits[rng.integers(0, n, 3)] = np.nan
        order = np.argsort(-logits, kind="stable")
        want = order[~np.isnan(logits[order])][:k]
        ids, got = top_k(logits, k)
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_array_equal(got, logits[want])


@pytest.mark.parametrize("settings", [SamplerSettings(seed=0), GREEDY], ids=["draw", "greedy"])
def test_sampling_nan_logits_is_a_clear_error(settings):
    with pytest.raises(ValueError, match="NaN"):
        Sampler(settings).sample(np.full(6, np.nan, np.float32))
    assert Sampler(settings).sample(np.array([np.nan, 1.0, np.nan], np.float32)) == 1


def test_top_p_keeps_the_smallest_set_reaching_p():
    ids, logits = top_k(LOGITS, 0)
    p = np.exp(logits) / np.exp(logits).sum()  # 0.574, 0.211, 0.078, 0.047, ...
    assert list(top_p(ids, logits, 0.5)[0]) == [3]
    assert list(top_p(ids, logits, p[0] + p[1] - 1e-4)[0]) == [3, 0]
    assert list(top_p(ids, logits, p[0] + p[1] + 1e-4)[0]) == [3, 0, 5]
    assert list(top_p(ids, logits, 1.0)[0]) == [3, 0, 5, 2, 1, 4]


def test_min_p_keeps_tokens_at_least_m_times_the_best():
    ids, logits = top_k(LOGITS, 0)
    # relative probabilities to the best: e^0, e^-1, e^-2, e^-2.5, e^-4, e^-5
    assert list(min_p(ids, logits, 0.3)[0]) == [3, 0]
    assert list(min_p(ids, logits, 0.1)[0]) == [3, 0, 5]
    assert list(min_p(ids, logits, 0.0)[0]) == [3, 0, 5, 2, 1, 4]


def test_temperature_and_draw_follow_the_distribution():
    settings = SamplerSettings(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0,
                               repeat_penalty=1.0, seed=7)
    sampler = Sampler(settings)
    counts = np.bincount([sampler.sample(LOGITS) for _ in range(20000)], minlength=6)
    want = np.exp(LOGITS / 2) / np.exp(LOGITS / 2).sum()
    np.testing.assert_allclose(counts / counts.sum(), want, atol=0.015)


def test_greedy_picks_the_best_after_the_penalty():
    assert Sampler(GREEDY).sample(LOGITS, [3]) == 3
    penalised = SamplerSettings(temperature=0.0, repeat_penalty=2.0)
    assert Sampler(penalised).sample(LOGITS, [3]) == 0  # 3.0 / 2 < 2.0


def test_the_filters_compose_in_llama_cpp_order():
    settings = SamplerSettings(temperature=1.0, top_k=4, top_p=0.9, min_p=0.2,
                               repeat_penalty=1.0, seed=1)
    sampler = Sampler(settings)
    drawn = {sampler.sample(LOGITS) for _ in range(500)}
    # top-k 4 -> {3, 0, 5, 2}; top-p 0.9 of those -> {3, 0, 5}; min-p 0.2 -> {3, 0}
    assert drawn == {3, 0}


@pytest.fixture(scope="module")
def model(tiny_model):
    return Model.load(tiny_model("moe", "f32"))


PROMPT = [1, 17, 300, 42, 99]


def test_same_seed_same_tokens(model):
    def run(seed):
        return list(generate(model, PROMPT, model.new_cache(), SamplerSettings(seed=seed),
                             max_tokens=12))
    first = run(3)
    assert len(first) == 12 and first == run(3)
    assert any(run(seed) != first for seed in (4, 5, 6))


def test_greedy_follows_the_logits(model):
    tokens = list(generate(model, PROMPT, model.new_cache(), GREEDY, max_tokens=6))
    cache = model.new_cache()
    logits = model.forward(PROMPT, cache)
    for token in tokens:
        assert token == int(np.argmax(logits))
        logits = model.forward([token], cache)


def test_stop_ids_end_generation_without_being_yielded(model):
    tokens = list(generate(model, PROMPT, model.new_cache(), GREEDY, max_tokens=6))
    stop = tokens[2]
    cut = tokens.index(stop)
    got = list(generate(model, PROMPT, model.new_cache(), GREEDY, max_tokens=6,
                        stop_ids={stop}))
    assert got == tokens[:cut]


def test_cache_holds_the_prompt_and_all_but_the_last_token(model):
    cache = model.new_cache()
    tokens = list(generate(model, PROMPT, cache, GREEDY, max_tokens=5))
    assert cache.tokens == PROMPT + tokens[:-1]
    # A chat continues on the same cache: feed the last token, then the next turn.
    more = list(generate(model, tokens[-1:] + [7, 8], cache, GREEDY, max_tokens=3))
    whole = list(generate(model, PROMPT + tokens + [7, 8], model.new_cache(), GREEDY,
                          max_tokens=3))
    assert more == whole


def test_prompt_overflow_raises_before_any_work(model):
    cache = model.new_cache(n_ctx=8)
    with pytest.raises(ContextOverflowError, match="prompt of 9 tokens does not fit the "
                                                   "context of 8"):
        generate(model, list(range(1, 10)), cache, max_tokens=3)
    assert cache.length == 0
    with pytest.raises(ValueError, match="empty"):
        generate(model, [], cache, max_tokens=3)


def test_generation_stops_at_the_end_of_the_context(model):
    cache = model.new_cache(n_ctx=8)
    tokens = list(generate(model, PROMPT, cache, GREEDY, max_tokens=100))
    assert len(tokens) == 8 - len(PROMPT) + 1 and cache.length == 8


def test_max_tokens_zero_does_nothing(model):
    cache = model.new_cache()
    assert list(generate(model, PROMPT, cache, max_tokens=0)) == []
    assert cache.length == 0
