"""Small products run on one thread; large ones on all of them; idle workers sleep."""

import os
import subprocess
import sys

import numba
import pytest

from mixlocal.quant.threads import PARALLEL_MIN_BYTES, set_threads, threads_for


def test_small_products_run_on_one_thread_and_the_count_is_restored():
    before = set_threads(numba.config.NUMBA_NUM_THREADS)
    with threads_for(PARALLEL_MIN_BYTES - 1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with threads_for(PARALLEL_MIN_BYTES):
        assert numba.get_num_threads() == before


def test_the_count_is_restored_when_the_product_fails():
    before = numba.get_num_threads()
    try:
        with threads_for(0):
            raise RuntimeError("kernel failed")
    except RuntimeError:
        pass
    assert numba.get_num_threads() == before


# A parallel kernel, then 0.2 s idle: the CPU time Numba's workers take meanwhile (ms).
_IDLE_WORKERS = """
import glob, os, time
import numpy as np
import mixlocal.quant
import numba
from numba import njit, prange

@njit(parallel=True)
def total(x):
    s = 0.0
    for i in prange(len(x)):
        s += np.sqrt(x[i])
    return s

def run_ns():
    return {p: int(open(p).read().split()[0]) for p in glob.glob("/proc/self/task/*/schedstat")}

x = np.ones(1 << 22)
total(x)
assert numba.threading_layer() == "omp"
spent = []
for _ in range(3):
    total(x)
    before = run_ns()
    time.sleep(0.2)
    after = run_ns()
    spent.append(sum(after[p] - before.get(p, 0) for p in after) / 1e6)
print(min(spent))
"""


def _idle_worker_ms(env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", _IDLE_WORKERS], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        pytest.skip(f"no OpenMP threading layer with /proc schedstat here: {out.stderr[-200:]}")
    return float(out.stdout)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two cores")
def test_numba_workers_sleep_soon_after_a_kernel():
    """Spinning workers would take the cores that numpy's work between kernels needs."""
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    # measured here: 0.7-4.4 ms, against 7.5-10.7 with libgomp's default
    assert _idle_worker_ms(env) < 6.0
    # the default, for contrast: the check can tell the two apart
    assert _idle_worker_ms({**env, "GOMP_SPINCOUNT": "300000"}) > 6.0
