"""The first-compile notice fires once per block, and only for a real compilation."""

from __future__ import annotations

from numba import njit

from mixlocal.jit_notice import on_first_compile


def test_fires_once_on_compile_and_not_for_compiled_code():
    @njit  # a fresh function: never cached
    def twice(x):
        return 2 * x

    calls = []
    with on_first_compile(lambda: calls.append(1)):
        assert twice(3) == 6      # compiles for int
        assert twice(1.5) == 3.0  # compiles again for float: no second notice
    assert calls == [1]
    with on_first_compile(lambda: calls.append(2)):
        assert twice(4) == 8      # already compiled
    assert calls == [1]
    twice(1j)                     # compiles, but outside any block
    assert calls == [1]
