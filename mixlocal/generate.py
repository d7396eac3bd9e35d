"""Token generation: run the prompt, then sample one token at a time."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

from .kv_cache import ContextOverflowError, KVCache
from .model import Model, RouteObserver
from .sampling import Sampler, SamplerSettings

__all__ = ["ContextOverflowError", "generate"]


def generate(model: Model, prompt_ids: Sequence[int], cache: KVCache,
             settings: SamplerSettings = SamplerSettings(), *, max_tokens: int,
             stop_ids: Collection[int] = (), n_expert_used: int | None = None,
             observer: RouteObserver | None = None) -> Iterator[int]:
    """Yield generated token ids after the prompt.

    The prompt is appended to `cache` (so a chat continues on the same cache); each
    yielded token is run in turn, except the last one: on return the cache holds the
    prompt and every yielded token but the last (cache.tokens says which).
    Stops on a stop id (not yielded), after max_tokens, or when the context is full.
    Raises ContextOverflowError at once, before any work, if the prompt does not fit.
    """
    prompt_ids = list(prompt_ids)
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    cache.check_fits(len(prompt_ids), "prompt")
    return _tokens(model, prompt_ids, cache, Sampler(settings), max_tokens,
                   frozenset(stop_ids), n_expert_used, observer)


def _tokens(model, prompt_ids, cache, sampler, max_tokens, stop_ids, n_expert_used,
            observer) -> Iterator[int]:
    if max_tokens <= 0:
        return
    run = dict(n_expert_used=n_expert_used, observer=observer)
    logits = model.forward(prompt_ids, cache, **run)
    for n in range(1, max_tokens + 1):
        token = sampler.sample(logits, cache.tokens)  # the penalty window includes the prompt
        if token in stop_ids:
            return
        yield token
        if n == max_tokens or cache.free == 0:
            return
        logits = model.forward([token], cache, **run)
