"""The first-compile notice fires once per block, and only for a real compilation; a
second process finds the kernels compiled in Numba's cache."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_kernels_load_from_numba_cache(tmp_path):
    """A second process loads the activation quantizers and the matvec kernels from
    Numba's cache instead of compiling them again; the first compiles each of them
    (a parallel and a serial build of one kernel must not share a cache key). A jitted
    closure over anything but plain values (another jitted function, say) would get a
    new key in every process."""
    code = ("import numpy as np\n"
            "from mixlocal.quant import cpu, QT\n"
            "from mixlocal.quant.matvec import kernels, matvec_blocks\n"
            "from mixlocal.quant.q8 import quantize_q8_0_pairs as q  # Q4_0's\n"
            "x = np.ones(256, np.float32)\n"
            "q.rows(np.ones((2, 256), np.float32), np.arange(2), np.ones(2, np.int64), 256,\n"
            "       np.empty(512, np.int8))\n"
            "fns = [q.vector, q._rows]\n"
            "path = cpu.available_paths()[0]\n"
            "if path != 'plain':\n"
            "    w = np.zeros((4, 144), np.uint8)\n"
            "    for parallel in (True, False):\n"
            "        matvec_blocks(path, QT.Q4_0, w, x, parallel=parallel)\n"
            "        fns.append(kernels(path, parallel)[QT.Q4_0])\n"
            "else:\n"
            "    q(x)\n"
            "print(sum(sum(f.stats.cache_misses.values()) for f in fns), len(fns))\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, check=True).stdout.split() for _ in range(2)]
    compiled = runs[0][1]
    assert runs == [[compiled, compiled], ["0", compiled]]
