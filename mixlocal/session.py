"""A conversation with a model: messages, settings, and a KV cache kept across turns.

Each turn encodes the whole conversation and reuses the longest prefix already in the
cache, so only the new turn's tokens are processed. An interrupted answer is kept as far
as it was shown, and the cache is rolled back to what it really holds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .chat import ChatFormat
from .generate import generate
from .model import Model, RouteObserver
from .sampling import SamplerSettings
from .tokenizer import Tokenizer


@dataclass
class TurnStats:
    prompt_tokens: int = 0      # the whole prompt, conversation so far included
    prompt_processed: int = 0   # of those, the ones not already in the cache
    prompt_seconds: float = 0.0
    generated: int = 0
    generate_seconds: float = 0.0


class StopMatcher:
    """Cuts streamed text at the first stop string, holding back what could begin one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text that is now safe to show."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            shown, self.pending = self.pending[:min(hits)], ""
            return shown
        cut = len(self.pending) - self._held()
        shown, self.pending = self.pending[:cut], self.pending[cut:]
        return shown

    def flush(self) -> str:
        shown, self.pending = self.pending, ""
        return shown

    def _held(self) -> int:
        """The length of the longest end of the pending text that begins a stop string."""
        for n in range(min(len(self.pending), max(map(len, self.stops), default=1) - 1), 0, -1):
            if any(s.startswith(self.pending[-n:]) for s in self.stops):
                return n
        return 0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Session:
    """Chat turns (`send`) or plain completions (`complete`) on one model and cache."""

    def __init__(self, model: Model, tokenizer: Tokenizer, chat_format: ChatFormat,
                 settings: SamplerSettings, *, n_ctx: int | None = None,
                 system: str | None = None, max_tokens: int | None = None,
                 stop: Sequence[str] = (), n_expert_used: int | None = None,
                 observer: RouteObserver | None = None):
        self.model, self.tokenizer, self.chat_format = model, tokenizer, chat_format
        self.settings = settings
        self.system = system
        self.max_tokens = max_tokens
        self.stop = list(stop)
        self.n_expert_used = n_expert_used
        self.observer = observer
        self.cache = model.new_cache(n_ctx)
        self.messages: list[dict[str, str]] = []
        self.last = TurnStats()

    @property
    def n_ctx(self) -> int:
        return self.cache.n_ctx

    def clear(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages = []

    def conversation(self, user_text: str | None = None) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        user = [{"role": "user", "content": user_text}] if user_text is not None else []
        return system + self.messages + user

    def send(self, user_text: str) -> Iterator[str]:
        """One chat turn: the answer's text, piece by piece.

        Encoding and the context check happen now; the answer is computed as it is
        read, and joins the conversation when the iteration ends, however it ends.
        """
        ids = self.chat_format.encode(self.conversation(user_text))
        return self._turn(user_text, self._prepare(ids))

    def complete(self, text: str) -> Iterator[str]:
        """Continue `text` as it is (no chat template, no conversation)."""
        return self._stream(self._prepare(self.tokenizer.encode(text)))

    def _prepare(self, ids: list[int]) -> list[int]:
        if not ids:
            raise ValueError("empty prompt")
        reuse = min(common_prefix(self.cache.tokens, ids), len(ids) - 1)  # feed at least one
        self.cache.truncate(reuse)
        self.cache.check_fits(len(ids) - reuse, "prompt")
        self.last = TurnStats(prompt_tokens=len(ids), prompt_processed=len(ids) - reuse)
        return ids

    def _turn(self, user_text: str, ids: list[int]) -> Iterator[str]:
        answer = []
        try:
            for piece in self._stream(ids):
                answer.append(piece)
                yield piece
        finally:
            # What was shown stays in the conversation, even after an interruption.
            if answer:
                self.messages += [{"role": "user", "content": user_text},
                                  {"role": "assistant", "content": "".join(answer)}]

    def _stream(self, ids: list[int]) -> Iterator[str]:
        stats, reuse = self.last, self.cache.length
        decoder = self.tokenizer.decoder()
        stops = StopMatcher(self.stop)
        tokens = generate(self.model, ids[reuse:], self.cache, self.settings,
                          max_tokens=self.max_tokens or self.n_ctx,
                          stop_ids=self.tokenizer.stop_ids,
                          n_expert_used=self.n_expert_used, observer=self.observer)
        start = time.perf_counter()
        try:
            for token in tokens:
                if not stats.generated:  # the prompt is done: the clock restarts
                    now = time.perf_counter()
                    stats.prompt_seconds, start = now - start, now
                stats.generated += 1
                text = stops.feed(decoder.feed(token))
                if text:
                    yield text
                if stops.stopped:
                    break
            if not stops.stopped:
                tail = stops.feed(decoder.flush())
                tail += "" if stops.stopped else stops.flush()
                if tail:
                    yield tail
        finally:
            tokens.close()
            elapsed = time.perf_counter() - start
            if stats.generated:
                stats.generate_seconds = elapsed
            else:
                stats.prompt_seconds = elapsed
