"""Prompt-processing and generation speed of mixlocal and llama.cpp, side by side.

Like llama-bench: ppN is N prompt tokens run at once into an empty context, tgN is N
tokens decoded one at a time (logits computed, no sampling), both in tokens/s. Each
run is a fresh subprocess (one engine, one setting, one thread count) that loads the
model, warms up, then times every test once; engines alternate run by run, so a
slow spell of the machine hits them alike, and each figure is the median of the runs.

llama.cpp runs through llama-cpp-python (the `bench` extra) in the Python given by
--llama-python, in two settings: `mmap` reads the memory-mapped file in place, as
mixlocal does; `repack` lets llama.cpp copy weights into its interleaved CPU layout
first (more memory, often faster). Generation speed is also set against the memory
bandwidth limit: bytes of weights one token reads, over read bandwidth measured here.

    python benchmarks/bench.py FILE.gguf [FILE.gguf ...] --threads 1,2 --reps 3

This file also holds the worker (`--worker SPEC`); it needs only numpy and the engine,
so it runs in llama-cpp-python's environment as well as in mixlocal's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Workers get the environment this script started with: importing mixlocal here sets
# GOMP_SPINCOUNT (quant/threads.py), and llama.cpp's OpenMP threads would inherit it.
_ENV = dict(os.environ)
N_CTX = 512
WARMUP_PROMPT = 32  # enough tokens to touch every expert before timing
SEED = 1234


def _tokens(n: int, n_vocab: int, salt: int) -> list[int]:
    import numpy as np
    # Past the control and byte tokens; the same ids for both engines.
    return np.random.default_rng(SEED + salt).integers(300, n_vocab, n).tolist()


def _peak_rss() -> int:
    """This process's peak resident set (VmHWM), bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# --- workers: each times one engine, prints one JSON line ------------------------------

class _Mixlocal:
    def __init__(self, spec: dict):
        t0 = time.perf_counter()
        from mixlocal.model import Model, set_threads
        set_threads(spec["threads"])
        self.model = Model.load(spec["file"], n_ctx=N_CTX)
        self.n_vocab = self.model.config.n_vocab
        self.load_s = time.perf_counter() - t0

    def prompt(self, tokens: list[int]) -> None:
        self.model.forward(tokens, self.model.new_cache())

    def generate(self, tokens: list[int]) -> None:
        cache = self.model.new_cache()
        for t in tokens:
            self.model.forward([t], cache)


class _LlamaCpp:
    def __init__(self, spec: dict):
        import ctypes
        import llama_cpp as L
        self.L, self.ctypes = L, ctypes
        t0 = time.perf_counter()
        quiet = L.llama_log_callback(lambda level, text, data: None)
        L.llama_log_set(quiet, ctypes.c_void_p())
        self._keep = quiet
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.load_mode = L.LLAMA_LOAD_MODE_MMAP
        mp.use_extra_bufts = spec["setting"] == "repack"
        self.model = L.llama_model_load_from_file(spec["file"].encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {spec['file']}")
        cp = L.llama_context_default_params()
        cp.n_ctx = N_CTX
        cp.n_batch = cp.n_ubatch = N_CTX
        cp.n_threads = cp.n_threads_batch = spec["threads"]
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.load_s = time.perf_counter() - t0

    def _decode(self, tokens: list[int]) -> None:
        arr = (self.L.llama_token * len(tokens))(*tokens)
        if self.L.llama_decode(self.ctx, self.L.llama_batch_get_one(arr, len(tokens))):
            raise RuntimeError("llama_decode failed")

    def _clear(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def prompt(self, tokens: list[int]) -> None:
        self._clear()
        self._decode(tokens)
        self.L.llama_synchronize(self.ctx)

    def generate(self, tokens: list[int]) -> None:
        self._clear()
        for t in tokens:
            self._decode([t])
        self.L.llama_synchronize(self.ctx)


def _huge_page_share(path: str) -> float:
    """The share of this process's resident pages of `path` (mapped now) that are
    mapped as 2 MiB pages (Linux's FilePmdMapped). A map of 4 KiB pages reads about 1.4x slower here;
    which one a file gets depends on how its pages entered the page cache (mixlocal
    advises huge pages, so its first read of a file leaves them)."""
    real, rss, pmd, mine = os.path.realpath(path), 0, 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's first line
                mine = fields[-1] == real
            elif mine and fields[0] in ("Rss:", "FilePmdMapped:"):
                n = int(fields[1])
                rss, pmd = (rss + n, pmd) if fields[0] == "Rss:" else (rss, pmd + n)
    return pmd / rss if rss else 0.0


def _read_bandwidth(path: str, threads: int) -> tuple[float, float]:
    """GB/s of a parallel sum over the file's bytes, mapped as the engines map them
    (page cache warm, pages touched once before timing), median of 5; and the share of
    the map in 2 MiB pages."""
    import numpy as np
    from bench_matvec import read_all
    from numba import set_num_threads

    set_num_threads(threads)
    rows = os.path.getsize(path) // (8 * 4096)
    words = np.memmap(path, np.uint64, "r", shape=(rows, 4096))
    read_all(words)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        read_all(words)
        times.append(time.perf_counter() - t0)
    return words.nbytes / statistics.median(times) / 1e9, _huge_page_share(path)


def worker(spec: dict) -> dict:
    if spec["engine"] == "bandwidth":
        gbps, huge = _read_bandwidth(spec["file"], spec["threads"])
        return {"gbps": gbps, "huge_pages": huge, "rss": _peak_rss()}
    engine = (_Mixlocal if spec["engine"] == "mixlocal" else _LlamaCpp)(spec)
    engine.prompt(_tokens(WARMUP_PROMPT, engine.n_vocab, 0))
    engine.generate(_tokens(2, engine.n_vocab, 1))
    seconds = {}
    for test in spec["tests"]:
        kind, n = test[:2], int(test[2:])
        tokens = _tokens(n, engine.n_vocab, 2)
        t0 = time.perf_counter()
        (engine.prompt if kind == "pp" else engine.generate)(tokens)
        seconds[test] = time.perf_counter() - t0
    return {"seconds": seconds, "load_s": engine.load_s, "rss": _peak_rss()}


# --- the orchestrator --------------------------------------------------------------------

def bytes_per_token(path: str) -> tuple[int, int]:
    """(bytes of all weights, bytes of weights one generated token reads)."""
    from mixlocal.config import ModelConfig
    from mixlocal.gguf_file import GGUFFile
    from mixlocal.weights import load_weights

    f = GGUFFile(path)
    c = ModelConfig.from_gguf(f)
    w = load_weights(f, c)
    per_token = w.nbytes - w.token_embd.nbytes + w.token_embd.nbytes // w.token_embd.shape[0]
    if w.output is w.token_embd:  # tied: the output reads the whole matrix after all
        per_token += w.token_embd.nbytes
    for layer in w.layers:
        if layer.router is not None:
            expert = sum(m.nbytes for m in (layer.experts[0].gate, layer.experts[0].up,
                                             layer.experts[0].down))
            per_token -= (len(layer.experts) - c.n_expert_used) * expert
    return w.nbytes, per_token


def _run_worker(python: str, spec: dict) -> dict:
    here = Path(__file__).resolve()
    proc = subprocess.run([python, str(here), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, cwd=here.parent.parent, env=_ENV)
    if proc.returncode:
        raise RuntimeError(f"{spec['engine']} worker failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _engines(args) -> list[tuple[str, str, str]]:
    """(engine, setting, python) in the order a round runs them."""
    out = [("mixlocal", "mmap", sys.executable)]
    if args.llama_python:
        out += [("llama.cpp", s, args.llama_python) for s in args.llama_settings]
    return out


def reload_in_huge_pages(path: str) -> None:
    """Drop the file from the page cache and read it back through a map advised for
    huge pages, as mixlocal's first read of a file does: then both engines map it in
    2 MiB pages. (Pages another process has mapped stay as they are.)"""
    import mmap

    import numpy as np

    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            m.madvise(mmap.MADV_HUGEPAGE)
            view = np.frombuffer(m, np.uint8)
            int(view[::4096].sum())  # one byte per page: the kernel reads the rest
            del view


def bench_file(path: str, args, log) -> dict:
    if args.huge_pages:
        log(f"{Path(path).name}: reading it into the page cache in 2 MiB pages")
        reload_in_huge_pages(path)
    total, per_token = bytes_per_token(path)
    result = {"file": path, "weight_bytes": total, "bytes_per_token": per_token, "runs": []}
    engines = _engines(args)
    for threads in args.threads:
        bandwidths = result.setdefault("bandwidth_runs", {}).setdefault(threads, [])
        for r in range(args.reps):
            # The read bandwidth moves with the machine's neighbours: measured each round.
            out = _run_worker(sys.executable, {"engine": "bandwidth", "file": path,
                                               "threads": threads})
            bandwidths.append(out["gbps"])
            result["huge_pages"] = out["huge_pages"]
            log(f"{Path(path).name}: {threads} thread(s), rep {r}: read bandwidth "
                f"{out['gbps']:.1f} GB/s, {out['huge_pages']:.0%} of the map in 2 MiB pages")
            # Rotate the order, so no engine always runs first after a pause.
            for engine, setting, python in engines[r % len(engines):] + engines[:r % len(engines)]:
                spec = {"engine": "mixlocal" if engine == "mixlocal" else "llama",
                        "setting": setting, "file": path, "threads": threads,
                        "tests": args.tests}
                out = _run_worker(python, spec)
                out.update(engine=engine, setting=setting, threads=threads, rep=r)
                result["runs"].append(out)
                log(f"  rep {r} {engine:9} {setting:6} "
                    + " ".join(f"{t}={int(t[2:]) / s:.1f}" for t, s in out["seconds"].items())
                    + f" t/s  rss={out['rss'] / 2**20:.0f} MiB")
        result.setdefault("bandwidth_gbps", {})[threads] = statistics.median(bandwidths)
    return result


def summarize(result: dict) -> dict:
    """{(engine, setting, threads): {test: (median t/s, half spread), "rss": median}}."""
    groups: dict[tuple, list] = {}
    for run in result["runs"]:
        groups.setdefault((run["engine"], run["setting"], run["threads"]), []).append(run)
    out = {}
    for key, runs in groups.items():
        cell = {"rss": statistics.median(r["rss"] for r in runs)}
        for test in runs[0]["seconds"]:
            rates = [int(test[2:]) / r["seconds"][test] for r in runs]
            cell[test] = (statistics.median(rates), (max(rates) - min(rates)) / 2)
        out[key] = cell
    return out


def format_table(result: dict, summary: dict) -> str:
    """One row per (threads, test): each engine's tokens/s, mixlocal's ratios to the
    llama.cpp settings and, for generation, to the bandwidth limit; then peak RSS."""
    per_token = result["bytes_per_token"]
    engines = list(dict.fromkeys((e, s) for e, s, _ in summary))
    llama = [k for k in engines if k[0] == "llama.cpp"]
    head = ["threads", "test"] + [f"{e} {s}" for e, s in engines]
    head += [f"mixlocal / llama.cpp {s}" for _, s in llama] + ["mixlocal of bw limit"]
    lines = [f"### {Path(result['file']).name}: {result['weight_bytes'] / 1e9:.2f} GB of "
             f"weights, {per_token / 1e9:.3f} GB read per generated token", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "--:|" * (len(head) - 2)]
    for threads in sorted({t for _, _, t in summary}):
        cells = {k: summary[(*k, threads)] for k in engines}
        mine = cells[("mixlocal", "mmap")]
        for test in [t for t in mine if t != "rss"]:
            row = [str(threads), test]
            row += [f"{cells[k][test][0]:.1f} ± {cells[k][test][1]:.1f}" for k in engines]
            row += [f"{mine[test][0] / cells[k][test][0]:.2f}x" for k in llama]
            limit = result["bandwidth_gbps"][threads] * 1e9 / per_token
            row.append(f"{mine[test][0] / limit:.0%}" if test.startswith("tg") else "")
            lines.append("| " + " | ".join(row) + " |")
        row = [str(threads), "peak RSS MiB"] + [f"{cells[k]['rss'] / 2**20:.0f}" for k in engines]
        row += [f"{mine['rss'] / cells[k]['rss']:.2f}x" for k in llama] + [""]
        lines.append("| " + " | ".join(row) + " |")
    limits = ", ".join(
        f"{t} thread(s) {gb:.1f} GB/s (median of {len(runs)} rounds, {min(runs):.1f}-"
        f"{max(runs):.1f}) = {gb * 1e9 / per_token:.1f} t/s"
        for (t, gb), runs in zip(result["bandwidth_gbps"].items(),
                                 result["bandwidth_runs"].values()))
    lines += ["", f"Generation's bandwidth limit: {limits}; the file's page cache "
                  f"{result['huge_pages']:.0%} in 2 MiB pages."]
    return "\n".join(lines)


def _llama_python_default() -> str | None:
    cand = os.environ.get("LLAMA_PYTHON")
    if cand and Path(cand).exists():
        return cand
    try:
        import llama_cpp  # noqa: F401
        return sys.executable
    except ImportError:
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="GGUF files (see benchmarks/make_mixtral.py)")
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    p.add_argument("--tests", default="pp64,pp256,tg32", help="ppN and tgN tests")
    p.add_argument("--reps", type=int, default=3, help="runs per engine (median taken)")
    p.add_argument("--llama-python", default=_llama_python_default(),
                   help="a Python with llama-cpp-python (default: $LLAMA_PYTHON, "
                        "or this one if it has it)")
    p.add_argument("--llama-settings", default="mmap,repack",
                   help="llama.cpp settings to run: mmap, repack")
    p.add_argument("--no-llama", action="store_true", help="run mixlocal only")
    p.add_argument("--huge-pages", action="store_true",
                   help="first drop each file from the page cache and read it back in "
                        "2 MiB pages (what mixlocal's first read of a file leaves)")
    p.add_argument("--json", type=Path, help="also write every run and median here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if not args.files:
        p.error("no GGUF files given")
    for path in args.files:
        if not Path(path).is_file():
            p.error(f"no such file: {path}")
    if args.reps < 1:
        p.error("--reps takes a count of at least 1")
    args.threads = args.threads.split(",")
    if not all(t.isdigit() and int(t) > 0 for t in args.threads):
        p.error(f"--threads takes counts such as 1,2, not {','.join(args.threads)}")
    args.threads = [int(t) for t in args.threads]
    args.tests = args.tests.split(",")
    for test in args.tests:
        if not (test[:2] in ("pp", "tg") and test[2:].isdigit() and int(test[2:]) > 0):
            p.error(f"unknown test {test!r}: ppN (a prompt of N tokens) or tgN (N generated)")
    args.llama_settings = args.llama_settings.split(",")
    for setting in args.llama_settings:
        if setting not in ("mmap", "repack"):
            p.error(f"unknown llama.cpp setting {setting!r}: mmap or repack")
    if args.no_llama:
        args.llama_python = None
    elif not args.llama_python:
        print("bench: llama-cpp-python not found (pip install 'mixlocal[bench]' or "
              "--llama-python); running mixlocal alone", file=sys.stderr)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"load average {os.getloadavg()[0]:.2f}")
    results = []
    for path in args.files:
        try:
            result = bench_file(path, args, log)
        except ValueError as e:  # mixlocal's errors for a file it cannot run
            p.exit(1, f"bench: {e}\n")
        summary = summarize(result)
        result["medians"] = [{"engine": e, "setting": s, "threads": t, **cell}
                             for (e, s, t), cell in summary.items()]
        results.append(result)
        print(format_table(result, summary) + "\n", flush=True)
    log(f"load average {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
