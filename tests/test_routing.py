"""Routing statistics on hand-built traces, compared with values worked out by hand."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from mixlocal.routing import (RouteTrace, RoutedText, expert_shares, from_json, js_divergence,
                              random_baselines, repetition_rates, summarize, to_json)


def trace_of(choices, n_expert=4):
    """A RouteTrace fed like a model would: choices[layer][token] = experts, first first,
    reported to the observer in reverse order (weights tell the order) and in two calls."""
    trace = RouteTrace(n_expert)
    for layer, rows in enumerate(choices):
        experts = np.array(rows)
        k = experts.shape[1]
        weights = np.tile(np.linspace(0.9, 0.1, k, dtype=np.float32), (len(rows), 1))
        weights /= weights.sum(axis=1, keepdims=True)
        for part in (slice(0, 2), slice(2, None)):
            pos = np.arange(len(rows))[part]
            trace.on_route(layer, pos, experts[part][:, ::-1], weights[part][:, ::-1])
    return trace


# Two layers, five tokens, k=2 of 4 experts.
CHOICES = [
    [[0, 1], [0, 2], [3, 1], [3, 1], [2, 0]],
    [[1, 2], [2, 1], [0, 3], [1, 2], [1, 0]],
]


def test_trace_assembles_first_choice_first():
    routing = trace_of(CHOICES).routing()
    assert routing.layers == (0, 1)
    assert routing.experts.tolist() == CHOICES
    assert np.all(np.diff(routing.weights, axis=-1) <= 0)


def test_shares_by_hand():
    routing = trace_of(CHOICES).routing()
    # Layer 0 choices: 0 x3, 1 x3, 2 x2, 3 x2 of 10; first: 0 x2, 3 x2, 2 x1 of 5.
    assert expert_shares(routing.experts, 4)[0].tolist() == [0.3, 0.3, 0.2, 0.2]
    assert expert_shares(routing.experts, 4, first_only=True)[0].tolist() == [0.4, 0.0, 0.2, 0.4]
    # Layer 1: 0 x2, 1 x4, 2 x3, 3 x1.
    assert expert_shares(routing.experts, 4)[1].tolist() == [0.2, 0.4, 0.3, 0.1]


def test_repetition_by_hand():
    first, shared = repetition_rates(trace_of(CHOICES).routing().experts)
    # Layer 0 pairs: (01,02) first same, shared; (02,31) no, no; (31,31) yes, yes;
    # (31,20) no, no.  Layer 1: (12,21) no, shared; (21,03) no, no; (03,12) no, no;
    # (12,10) first same, shared.
    assert first.tolist() == [0.5, 0.25]
    assert shared.tolist() == [0.5, 0.5]


@pytest.mark.parametrize("n,k", [(8, 2), (8, 1), (8, 3), (4, 2), (6, 4)])
def test_random_baselines_exact(n, k):
    """The shared baseline equals the exhaustive count over all pairs of k-subsets."""
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(bool(set(a) & set(b)) for a in subsets for b in subsets)
    first, shared = random_baselines(n, k)
    assert first == 1 / n
    assert shared == pytest.approx(hits / len(subsets) ** 2, abs=1e-12)


def test_paper_baseline():
    assert random_baselines(8, 2)[1] == pytest.approx(1 - 6 / 8 * 5 / 7, abs=1e-12)


def test_random_router_matches_baselines():
    rng = np.random.default_rng(0)
    experts = np.stack([rng.permutation(8)[:2] for _ in range(40000)])[None]
    first, shared = repetition_rates(experts)
    base_first, base_shared = random_baselines(8, 2)
    assert first[0] == pytest.approx(base_first, abs=0.01)
    assert shared[0] == pytest.approx(base_shared, abs=0.01)


def test_js_divergence():
    p = np.array([0.5, 0.5, 0.0, 0.0])
    q = np.array([0.0, 0.0, 0.5, 0.5])
    assert js_divergence(np.stack([p, p])) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(np.stack([p, q])) == pytest.approx(1.0, abs=1e-12)
    # Against the two-distribution textbook form: (KL(p||m) + KL(q||m)) / 2.
    a, b = np.array([0.1, 0.2, 0.7]), np.array([0.3, 0.3, 0.4])
    m = (a + b) / 2
    kl = lambda x, y: float(np.sum(x * np.log2(x / y)))
    assert js_divergence(np.stack([a, b])) == pytest.approx((kl(a, m) + kl(b, m)) / 2, rel=1e-12)
    # Per layer: (m texts, n_layer, n) -> (n_layer,), each layer on its own.
    a4, b4 = np.append(a, 0.0), np.append(b, 0.0)
    per_layer = js_divergence(np.stack([np.stack([p, a4]), np.stack([q, b4])]))
    assert per_layer.tolist() == pytest.approx([1.0, float(js_divergence(np.stack([a4, b4])))])


def test_json_round_trip():
    routing = trace_of(CHOICES).routing()
    text = RoutedText("a.txt", [5, 6, 7, 8, 9], ["a", "b", "c", "d", "e"], routing)
    other = RoutedText("b.txt", [1, 2, 3, 4, 5], list("vwxyz"), trace_of(CHOICES[::-1]).routing())
    doc = json.loads(json.dumps(to_json([text, other], model="tiny")))
    back = from_json(doc)
    assert [t.name for t in back] == ["a.txt", "b.txt"]
    assert np.array_equal(back[0].routing.experts, routing.experts)
    assert np.array_equal(back[0].routing.weights, routing.weights)
    assert back[0].routing.layers == routing.layers
    summary = summarize(back[1].routing)
    assert doc["texts"][1]["summary"]["repeat_first"] == summary.repeat_first.tolist()
    assert doc["baseline"]["repeat_shared"] == random_baselines(4, 2)[1]
    assert doc["divergence"]["per_layer"] == pytest.approx(
        js_divergence(np.stack([summarize(routing).share, summary.share])).tolist())


def test_trace_errors():
    with pytest.raises(ValueError, match="dense"):
        RouteTrace(8).routing()
    trace = RouteTrace(4)
    trace.on_route(0, np.array([0, 2]), np.zeros((2, 2), int), np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="not one sequence"):
        trace.routing()
    with pytest.raises(ValueError, match="out of range"):
        trace_of(CHOICES).routing().layer_row(5)
    with pytest.raises(ValueError, match="two tokens"):
        repetition_rates(np.zeros((1, 1, 2), int))


def test_model_trace_matches_built_routers(tmp_path):
    from mixlocal.model import Model
    from routed_model import CONFIG, expected_weights, first_choice, second_choice, write_routed_model

    model = Model.load(write_routed_model(tmp_path / "routed.gguf"))
    tokens = np.array([1, 70, 71, 72, 73, 300, 301, 5, 6, 6, 7, 200])
    trace = RouteTrace(CONFIG.n_expert)
    cache = model.new_cache()
    # A prompt pass then one token at a time, as generation feeds the model.
    model.forward(tokens[:8], cache, observer=trace)
    for t in tokens[8:]:
        model.forward([t], cache, observer=trace)
    routing = trace.routing()
    want = np.stack([np.stack([first_choice(layer, tokens), second_choice(layer, tokens)], -1)
                     for layer in range(CONFIG.n_layer)])
    assert routing.layers == (0, 1, 2)
    assert np.array_equal(routing.experts, want)
    w1, w2 = expected_weights()
    np.testing.assert_allclose(routing.weights[..., 0], w1, rtol=1e-5)
    np.testing.assert_allclose(routing.weights[..., 1], w2, rtol=1e-3)

    # Shares and repetition rates of the built routing, counted by hand from the ids:
    # layer 0 first choices: 1 6 7 0 1 4 5 5 6 6 7 0 (ids mod 64 mod 8).
    summary = summarize(routing)
    assert first_choice(0, tokens).tolist() == [1, 6, 7, 0, 1, 4, 5, 5, 6, 6, 7, 0]
    assert summary.share_first[0].tolist() == pytest.approx(
        np.array([2, 2, 0, 0, 1, 2, 3, 2]) / 12)
    assert summary.repeat_first[0] == pytest.approx(2 / 11)  # 5,5 and 6,6
    # Layer 2 groups ids by 4: 0 1 1 2 2 3 3 1 1 1 1 2 -> pairs equal at 2,4,6,8,9,10 of 11.
    assert first_choice(2, tokens).tolist() == [0, 1, 1, 2, 2, 3, 3, 1, 1, 1, 1, 2]
    assert summary.repeat_first[2] == pytest.approx(6 / 11)
