"""Which experts the router picks: a trace observer and the Mixtral paper's statistics.

The views follow Section 5 of the Mixtral paper (arXiv 2401.04088):
- share: per layer, the fraction of routing choices each expert receives. Every one of a
  token's k choices counts (the paper's Figure 7 counts first and second choices), so a
  uniform router gives 1/n_expert; `share_first` counts only first choices.
- repetition: per layer, the fraction of consecutive token pairs (t, t+1) that
  - "first": have the same first-choice expert (random baseline 1/n_expert);
  - "shared": share at least one of their k chosen experts. For k=2 this is the paper's
    "first or second choice" column: its random baseline, 1 - 6/8 * 5/7 = 46% for 8
    experts, is the chance that two random 2-subsets intersect. For any n and k the
    baseline is 1 - C(n-k, k) / C(n, k).
- divergence between the share distributions of several texts: the Jensen-Shannon
  divergence generalised to m texts with equal weights, H(mean p) - mean H(p), in bits
  (0 = identical; at most 1 for two texts).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np

JSON_FORMAT = "mixlocal-route"
JSON_VERSION = 1


@dataclass(frozen=True)
class Routing:
    """The experts chosen for one run of tokens, first choice first.

    `experts` is int (n_layer, n_tokens, k), `weights` float32 of the same shape (the
    renormalised top-k probabilities); `layers` names the model layer of each row.
    """

    experts: np.ndarray
    weights: np.ndarray
    n_expert: int
    layers: tuple[int, ...]

    @property
    def n_tokens(self) -> int:
        return self.experts.shape[1]

    @property
    def k(self) -> int:
        return self.experts.shape[2]

    def layer_row(self, layer: int) -> int:
        """Row of model layer `layer`; ValueError naming the valid range if absent."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} is out of range: this model's routed layers are "
                             f"{self.layers[0]}..{self.layers[-1]}")
        return self.layers.index(layer)


class RouteTrace:
    """Model observer that records every routing decision; `routing()` assembles them.

    The model calls `on_route` once per MoE layer per forward pass; recording only keeps
    copies of the arrays, all assembly happens afterwards.
    """

    def __init__(self, n_expert: int):
        self.n_expert = n_expert
        self._calls: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}

    def on_route(self, layer: int, positions, experts, weights) -> None:
        self._calls.setdefault(layer, []).append(
            (np.array(positions, dtype=np.int64), np.array(experts), np.array(weights)))

    def routing(self) -> Routing:
        if not self._calls:
            raise ValueError("no routing was recorded (a dense model has no router)")
        layers = tuple(sorted(self._calls))
        experts, weights = [], []
        for layer in layers:
            pos, e, w = (np.concatenate(parts) for parts in zip(*self._calls[layer]))
            order = np.argsort(pos, kind="stable")
            if not np.array_equal(pos[order], np.arange(len(pos))):
                raise ValueError(f"layer {layer}: recorded positions are not one sequence 0..n-1")
            experts.append(e[order])
            weights.append(w[order])
        n = {len(e) for e in experts}
        if len(n) != 1:
            raise ValueError("layers recorded different numbers of tokens")
        e = np.stack(experts).astype(np.int64)
        w = np.stack(weights).astype(np.float32)
        # First choice first, whatever order the model reported.
        by_weight = np.argsort(-w, axis=-1, kind="stable")
        return Routing(np.take_along_axis(e, by_weight, -1), np.take_along_axis(w, by_weight, -1),
                       self.n_expert, layers)


def expert_shares(experts: np.ndarray, n_expert: int, *, first_only: bool = False) -> np.ndarray:
    """(n_layer, n_expert): fraction of the layer's choices that went to each expert."""
    chosen = experts[..., :1] if first_only else experts
    n_layer = chosen.shape[0]
    flat = (chosen + n_expert * np.arange(n_layer)[:, None, None]).ravel()
    counts = np.bincount(flat, minlength=n_layer * n_expert).reshape(n_layer, n_expert)
    return counts / max(chosen[0].size, 1)


def repetition_rates(experts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, the (first, shared) repetition rates of consecutive tokens (module doc)."""
    if experts.shape[1] < 2:
        raise ValueError("repetition rates need at least two tokens")
    this, nxt = experts[:, :-1], experts[:, 1:]
    first = (this[..., 0] == nxt[..., 0]).mean(axis=1)
    shared = (this[..., :, None] == nxt[..., None, :]).any(axis=(-2, -1)).mean(axis=1)
    return first, shared


def random_baselines(n_expert: int, k: int) -> tuple[float, float]:
    """The (first, shared) repetition rates of a router that picks k experts at random."""
    return 1.0 / n_expert, 1.0 - comb(n_expert - k, k) / comb(n_expert, k)


def js_divergence(distributions: np.ndarray) -> np.ndarray:
    """Generalised Jensen-Shannon divergence in bits of distributions stacked on axis 0.

    (m, ..., n) -> (...): H(mean_i p_i) - mean_i H(p_i), entropy over the last axis.
    """
    p = np.asarray(distributions, dtype=np.float64)

    def entropy(q):
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.where(q > 0, q * np.log2(q), 0.0).sum(axis=-1)

    return np.maximum(entropy(p.mean(axis=0)) - entropy(p).mean(axis=0), 0.0)


@dataclass(frozen=True)
class RouteSummary:
    """The per-layer statistics of one text (see the module doc)."""

    share: np.ndarray          # (n_layer, n_expert), all k choices
    share_first: np.ndarray    # (n_layer, n_expert), first choices
    repeat_first: np.ndarray   # (n_layer,)
    repeat_shared: np.ndarray  # (n_layer,)

    FIELDS = ("share", "share_first", "repeat_first", "repeat_shared")


def summarize(routing: Routing) -> RouteSummary:
    first, shared = repetition_rates(routing.experts)
    return RouteSummary(expert_shares(routing.experts, routing.n_expert),
                        expert_shares(routing.experts, routing.n_expert, first_only=True),
                        first, shared)


@dataclass(frozen=True)
class RoutedText:
    """A text as the model saw it (token ids and their printable pieces) and its routing."""

    name: str
    tokens: list[int]
    pieces: list[str]
    routing: Routing

    def __post_init__(self):
        if not len(self.tokens) == len(self.pieces) == self.routing.n_tokens:
            raise ValueError(f"{self.name}: {len(self.tokens)} tokens, {len(self.pieces)} pieces "
                             f"and {self.routing.n_tokens} routed positions differ")


def to_json(texts: list[RoutedText], model: str = "") -> dict:
    """The whole trace and its summaries as a JSON-ready dict (`from_json` reads it back)."""
    first = texts[0].routing
    doc = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "model": model,
        "n_expert": first.n_expert,
        "k": first.k,
        "layers": list(first.layers),
        "baseline": dict(zip(("repeat_first", "repeat_shared"),
                             random_baselines(first.n_expert, first.k))),
        "texts": [],
    }
    summaries = []
    for text in texts:
        summary = summarize(text.routing)
        summaries.append(summary)
        doc["texts"].append({
            "name": text.name,
            "tokens": [int(t) for t in text.tokens],
            "pieces": list(text.pieces),
            # [layer][token] -> the k chosen experts / weights, first choice first
            "experts": text.routing.experts.tolist(),
            "weights": text.routing.weights.tolist(),
            "summary": {f: getattr(summary, f).tolist() for f in RouteSummary.FIELDS},
        })
    if len(texts) > 1:
        per_layer = js_divergence(np.stack([s.share for s in summaries]))
        doc["divergence"] = {"measure": "Jensen-Shannon divergence of the expert shares, bits",
                             "per_layer": per_layer.tolist(), "mean": float(per_layer.mean())}
    return doc


def from_json(doc: dict) -> list[RoutedText]:
    if doc.get("format") != JSON_FORMAT or doc.get("version") != JSON_VERSION:
        raise ValueError(f"not a {JSON_FORMAT} v{JSON_VERSION} document")
    layers = tuple(doc["layers"])
    return [RoutedText(t["name"], t["tokens"], t["pieces"],
                       Routing(np.array(t["experts"], dtype=np.int64).reshape(len(layers), len(t["tokens"]), -1),
                               np.array(t["weights"], dtype=np.float32).reshape(len(layers), len(t["tokens"]), -1),
                               doc["n_expert"], layers))
            for t in doc["texts"]]
