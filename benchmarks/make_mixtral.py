"""Write synthetic GGUF files with Mixtral 8x7B's real shapes, for benchmarks/bench.py.

    python benchmarks/make_mixtral.py --layers 2 --quant q4_0,q4_k_m --out /work/benchfiles

Each file is named mixtral-<layers>L-<mix>.gguf and skipped if it exists. Shapes are
mixlocal.synthetic's "mixtral-8x7b" preset (n_embd 4096, n_ff 14336, 8 experts, 2 used,
32 heads, 8 KV heads, 32000 vocab, untied output); the quant mixes are its MIXES
(q4_0; q4_k_m: Q4_K, Q6_K output and ffn_down in alternate layers, Q8_0 attn_k/v,
Q5_K attn_output; q2_k: the full-depth file that fits in RAM). Weights are valid
random blocks, so both engines run them; routing is random-like.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from mixlocal.synthetic import MIXES, PRESETS, write_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2, help="number of blocks (Mixtral: 32)")
    p.add_argument("--quant", default="q4_0,q4_k_m", help=f"mixes: {', '.join(MIXES)}")
    p.add_argument("--out", type=Path, default=Path("."), help="directory to write to")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.layers < 1:
        p.error("--layers takes a count of at least 1")
    unknown = [mix for mix in args.quant.split(",") if mix not in MIXES]
    if unknown:
        p.error(f"unknown quant mix {unknown[0]!r} (known: {', '.join(MIXES)})")
    config = dataclasses.replace(PRESETS["mixtral-8x7b"], n_layer=args.layers)
    args.out.mkdir(parents=True, exist_ok=True)
    for mix in args.quant.split(","):
        path = args.out / f"mixtral-{args.layers}L-{mix}.gguf"
        if path.exists():
            print(f"{path} exists", file=sys.stderr)
        else:
            t0 = time.perf_counter()
            write_model(path, config, mix, seed=args.seed)
            print(f"wrote {path}: {path.stat().st_size / 1e9:.2f} GB in "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        print(path)


if __name__ == "__main__":
    main()
