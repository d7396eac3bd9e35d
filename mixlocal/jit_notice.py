"""Notice when Numba compiles a kernel instead of loading it from its cache.

The first run on a machine (or after an upgrade) compiles the kernels it uses, which
takes a minute or so; later runs load them in well under a second. A front end shows
a message during that minute instead of looking stuck.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from numba.core import event


class _FirstCompile(event.Listener):
    def __init__(self, callback: Callable[[], None]):
        self.callback, self.fired = callback, False

    def on_start(self, ev: event.Event) -> None:
        if not self.fired:
            self.fired = True
            self.callback()

    def on_end(self, ev: event.Event) -> None:
        pass


@contextmanager
def on_first_compile(callback: Callable[[], None]) -> Iterator[None]:
    """Within the block, call callback() once, when the first compilation starts."""
    with event.install_listener("numba:compile", _FirstCompile(callback)):
        yield
