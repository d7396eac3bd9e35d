"""Matrix-vector speed in GB/s of weight bytes read, next to the memory's read speed.

    python benchmarks/bench_matvec.py [--types Q4_0,Q4_K,Q6_K,Q8_0] [--runs 9] [--best]

Mixtral's shapes, 4096x14336 (gate, up) and 14336x4096 (down), several matrices in
rotation so every product reads from DRAM, not cache. Columns: each SIMD path this
CPU has, the portable float kernel, and a Numba prange sum of the same bytes (the
read bandwidth: the limit a memory-bound product can reach). Medians of --runs, or
with --best the fastest run: on cores shared with other work, a 2-thread run whose
second thread waits for a core is slow by a whole scheduler slice.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from numba import njit, prange

from mixlocal.quant import QT, cpu
from mixlocal.quant.matvec import matvec_blocks
from mixlocal.quant.matvec_plain import matvec_rows
from mixlocal.quant.randblocks import random_blocks
from mixlocal.quant.threads import set_threads

SHAPES = ((4096, 14336), (14336, 4096))
ROTATION_BYTES = 400 << 20  # far beyond any cache


@njit(cache=True, parallel=True)
def read_all(words):
    """Sum of every 8-byte word, rows split across threads: pure streaming reads."""
    total = np.zeros(words.shape[0], np.uint64)
    for r in prange(words.shape[0]):
        acc = np.uint64(0)
        for j in range(words.shape[1]):
            acc += words[r, j]
        total[r] = acc
    return total.sum()


def _matrices(qtype, rows, cols):
    """Read-only matrices whose bytes add up to ROTATION_BYTES: valid blocks, repeated."""
    unit = random_blocks(qtype, (256, cols), np.random.default_rng(0))
    one = np.tile(unit, (rows // 256, 1))
    out = []
    for _ in range(max(2, ROTATION_BYTES // one.nbytes)):
        m = one.copy()
        m.flags.writeable = False
        out.append(m)
    return out


def _gbps(fn, mats, runs, stat):
    for m in mats:  # compile or load from cache; first touch of every page
        fn(m)
    times = []
    for i in range(runs * len(mats)):
        t = time.perf_counter()
        fn(mats[i % len(mats)])
        times.append(time.perf_counter() - t)
    return mats[0].nbytes / stat(times) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--types", default="Q4_0,Q4_K,Q6_K,Q8_0")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--best", action="store_true", help="fastest run, not the median")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs takes a count of at least 1")
    names = args.types.upper().split(",")
    unknown = [name for name in names if name not in QT.__members__]
    if unknown:
        parser.error(f"unknown type {unknown[0]}; GGUF names such as Q4_0, Q4_K, Q6_K")
    stat = np.min if args.best else np.median
    paths = [p for p in cpu.available_paths() if p != "plain"]
    x_of = {cols: np.random.default_rng(1).standard_normal(cols).astype(np.float32)
            for _, cols in SHAPES}
    header = ["type", "shape", "threads"] + paths + ["plain", "read", "best/read"]
    print(f"load average {os.getloadavg()[0]:.1f}; GB/s of weight bytes, "
          f"{'fastest' if args.best else 'median'} of {args.runs} runs")
    print(" | ".join(f"{h:>10}" for h in header))
    for name in names:
        qtype = QT[name]
        for rows, cols in SHAPES:
            mats = _matrices(qtype, rows, cols)
            words = [m.view(np.uint64) for m in mats]  # these rows are whole words
            x = x_of[cols]
            y = np.empty(rows, np.float32)
            kind = int(qtype)
            for threads in (1, 2):
                set_threads(threads)
                speeds = [_gbps(lambda m, p=p: matvec_blocks(p, qtype, m, x, y), mats,
                                args.runs, stat) for p in paths]
                plain = _gbps(lambda m: matvec_rows(kind, m, x, y), mats,
                              max(1, args.runs // 3), stat)
                read = _gbps(read_all, words, args.runs, stat)
                cells = [name, f"{rows}x{cols}", str(threads)] + [f"{s:.1f}" for s in speeds]
                cells += [f"{plain:.1f}", f"{read:.1f}", f"{max(speeds) / read:.0%}"]
                print(" | ".join(f"{c:>10}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
