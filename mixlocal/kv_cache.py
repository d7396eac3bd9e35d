"""The attention key/value cache: one preallocated buffer per model run."""

from __future__ import annotations

import mmap

import numpy as np


class ContextOverflowError(ValueError):
    """The tokens do not fit in what is left of the context."""


class KVCache:
    """Keys and values of every layer for the tokens run so far (`tokens`).

    Buffers are float32 (n_layer, n_ctx, n_head_kv, head_dim), each in an anonymous map
    of its own (_zeros): a long context costs memory only as it fills.
    """

    def __init__(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int):
        if n_ctx <= 0:
            raise ValueError(f"context size must be positive, not {n_ctx}")
        shape = (n_layer, n_ctx, n_head_kv, head_dim)
        self.k, self.v = _zeros(shape), _zeros(shape)
        self.tokens: list[int] = []  # lets a chat reuse the longest common prefix

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def n_ctx(self) -> int:
        return self.k.shape[1]

    @property
    def free(self) -> int:
        return self.n_ctx - self.length

    def check_fits(self, n: int, what: str = "input") -> None:
        if n > self.free:
            used = f" ({self.length} already used)" if self.length else ""
            raise ContextOverflowError(f"{what} of {n} tokens does not fit the context of "
                                       f"{self.n_ctx}{used}")

    def truncate(self, n: int) -> None:
        """Forget every position from n on (a chat rolls back an answer this way)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {n}")
        del self.tokens[n:]

    def append(self, tokens) -> None:
        """Record tokens whose keys and values were just written at positions length.."""
        self.tokens.extend(int(t) for t in tokens)


def _zeros(shape: tuple[int, ...]) -> np.ndarray:
    """float32 zeros in a map of their own: the kernel supplies zeroed pages as they are
    first written, and the pages go back to it with the array. np.zeros takes a cache
    under 32 MiB from malloc, which keeps freed blocks for the forward pass (heap.py):
    it zeroes reused memory by writing every page, and keeps it after the cache is gone
    (11 MiB of a 2-layer Mixtral's peak with 512-token caches)."""
    n = int(np.prod(shape))
    size = max(4 * n, 1)
    pages = (mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
             if hasattr(mmap, "MAP_PRIVATE") else mmap.mmap(-1, size))  # POSIX, Windows
    return np.frombuffer(pages, np.float32, n).reshape(shape)
