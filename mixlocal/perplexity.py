"""Perplexity of a token sequence, computed the way llama.cpp's perplexity tool does.

The tokens are cut into consecutive windows of n_ctx tokens (a trailing partial window is
dropped). Each window is evaluated from an empty cache, with its first token replaced by
BOS when the model adds one. Only the second half is scored: with first = n_ctx // 2,
the logits at positions first .. n_ctx-2 predict the tokens at first+1 .. n_ctx-1, so
every scored token has at least n_ctx/2 tokens of context. Over all scored tokens,
PPL = exp(mean NLL) and its standard error is PPL * sqrt((E[NLL^2] - E[NLL]^2) / (N-1)).
llama.cpp also refuses texts of fewer than two windows; here one window is enough.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PerplexityProgress:
    """The running totals after `window` of `n_windows` windows."""

    window: int
    n_windows: int
    count: int    # tokens scored so far
    nll: float    # sum of their negative log-likelihoods (nats)
    nll2: float   # sum of squares

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count)

    @property
    def stderr(self) -> float:
        """Standard error of the perplexity (0 until two tokens are scored)."""
        mean = self.nll / self.count
        var = self.nll2 / self.count - mean * mean
        if self.count < 2 or var <= 0:
            return 0.0
        return self.ppl * math.sqrt(var / (self.count - 1))


def windows(tokens: Sequence[int], n_ctx: int, bos: int | None) -> np.ndarray:
    """(n_windows, n_ctx) token windows, each starting with BOS when `bos` is given."""
    if n_ctx < 4:
        raise ValueError(f"--ctx {n_ctx} is too small (at least 4)")
    n_windows = len(tokens) // n_ctx
    if n_windows == 0:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one window of "
                         f"{n_ctx}: use a longer text or a smaller --ctx")
    out = np.array(tokens[:n_windows * n_ctx], dtype=np.int64).reshape(n_windows, n_ctx)
    if bos is not None:
        out[:, 0] = bos
    return out


def window_nll(logits: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Negative log-likelihoods of the scored half of one window, from its (n_ctx, n_vocab) logits."""
    first = len(window) // 2
    scored = np.asarray(logits[first:-1], dtype=np.float64)
    targets = window[first + 1:]
    top = scored.max(axis=1)
    log_z = top + np.log(np.exp(scored - top[:, None]).sum(axis=1))
    return log_z - scored[np.arange(len(targets)), targets]


def evaluate(model, batches: np.ndarray, *,
             n_expert_used: int | None = None) -> Iterator[PerplexityProgress]:
    """Evaluate the windows from `windows` one by one, yielding the running totals after each."""
    cache = model.new_cache(batches.shape[1])
    count, nll, nll2 = 0, 0.0, 0.0
    for i, window in enumerate(batches):
        cache.truncate(0)
        logits = model.forward(window, cache, n_expert_used=n_expert_used, logits_all=True)
        values = window_nll(logits, window)
        count += len(values)
        nll += float(values.sum())
        nll2 += float(np.square(values).sum())
        yield PerplexityProgress(i + 1, len(batches), count, nll, nll2)


def perplexity(model, tokens: Sequence[int], n_ctx: int = 512, *, bos: int | None = None,
               n_expert_used: int | None = None) -> Iterator[PerplexityProgress]:
    """`evaluate` over the windows of tokens; a text shorter than one window fails at once."""
    return evaluate(model, windows(tokens, n_ctx, bos), n_expert_used=n_expert_used)
