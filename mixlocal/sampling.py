"""Choosing the next token from logits, in llama.cpp's order:
repetition penalty, top-k, top-p, min-p, temperature, then a draw."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplerSettings:
    temperature: float = 0.8  # 0: greedy (the most likely token after the penalty)
    top_k: int = 40           # 0: off
    top_p: float = 0.95       # 1: off
    min_p: float = 0.05       # 0: off
    repeat_penalty: float = 1.1  # 1: off
    repeat_last_n: int = 64
    seed: int | None = None   # the same seed gives the same tokens

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], not {self.min_p}")
        if self.repeat_penalty <= 0:
            raise ValueError(f"repeat_penalty must be > 0, not {self.repeat_penalty}")


GREEDY = SamplerSettings(temperature=0.0, repeat_penalty=1.0)


def repeat_penalty(logits: np.ndarray, recent: Sequence[int], penalty: float) -> np.ndarray:
    """Make each recently seen token less likely: divide a positive logit by the
    penalty, multiply a negative one (a new array)."""
    logits = np.array(logits, dtype=np.float32)
    if penalty != 1.0 and len(recent):
        ids = np.unique(np.asarray(recent, dtype=np.int64))
        seen = logits[ids]
        logits[ids] = np.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best candidates as (ids, logits), best first (all of them if k <= 0)."""
    if 0 < k < len(logits):
        ids = np.argpartition(-logits, k - 1)[:k]
    else:
        ids = np.arange(len(logits))
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    return ids, logits[ids]


def _probs(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def top_p(ids: np.ndarray, logits: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """The fewest best-first candidates whose probabilities add up to at least p."""
    if p >= 1.0:
        return ids, logits
    keep = int(np.searchsorted(np.cumsum(_probs(logits)), p)) + 1
    return ids[:keep], logits[:keep]


def min_p(ids: np.ndarray, logits: np.ndarray, m: float) -> tuple[np.ndarray, np.ndarray]:
    """The candidates at least m times as likely as the best one (sorted input)."""
    if m <= 0.0:
        return ids, logits
    keep = logits >= logits[0] + np.log(m)
    return ids[keep], logits[keep]


class Sampler:
    def __init__(self, settings: SamplerSettings = SamplerSettings()):
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)

    def sample(self, logits: np.ndarray, recent_ids: Sequence[int] = ()) -> int:
        s = self.settings
        recent = list(recent_ids)[-s.repeat_last_n:] if s.repeat_last_n > 0 else []
        logits = repeat_penalty(logits, recent, s.repeat_penalty)
        if s.temperature == 0:
            return int(np.argmax(logits))
        ids, cand = top_k(logits, s.top_k)
        ids, cand = top_p(ids, cand, s.top_p)
        ids, cand = min_p(ids, cand, s.min_p)
        cdf = np.cumsum(_probs(cand / np.float32(s.temperature)))
        i = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return int(ids[min(i, len(ids) - 1)])
