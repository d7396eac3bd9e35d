"""The key/value cache's buffers: zeros, writable, and memory only while in use."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from mixlocal.kv_cache import KVCache


def test_a_new_cache_is_writable_zeros():
    cache = KVCache(2, 16, 4, 8)
    for buf in (cache.k, cache.v):
        assert buf.shape == (2, 16, 4, 8) and buf.dtype == np.float32
        assert buf.flags.c_contiguous and buf.flags.writeable
        assert not buf.any()
    cache.k[1, 3] = 1.0
    assert cache.k.sum() == 32 and not cache.v.any()  # two buffers, not one


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_a_cache_costs_memory_only_while_it_lives():
    """With malloc set to keep freed blocks for the forward pass (heap.py), a filled
    8 MiB cache gives its pages back when dropped, and a new one takes none until
    written (Linux's RssAnon, in a fresh process)."""
    code = """
import gc
from mixlocal import heap
from mixlocal.kv_cache import KVCache

def anon_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("RssAnon:")) / 1024

heap.keep_freed_memory()
before = anon_mib()
cache = KVCache(2, 512, 8, 128)
cache.k[:] = 1.0
cache.v[:] = 1.0
filled = anon_mib()
del cache
gc.collect()
freed = anon_mib()
KVCache(2, 512, 8, 128)
print(filled - before, freed - before, anon_mib() - freed)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    filled, freed, fresh = map(float, out.split())
    assert filled > 7.5  # the two 4 MiB buffers were written
    assert freed < 0.5 and fresh < 0.5
