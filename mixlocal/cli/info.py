"""`mixlocal info`: what a model file holds and the memory a run of it needs."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Annotated, Optional

import numpy as np
import typer
from rich.table import Table

from ..chat import fallback_template
from ..config import ModelConfig
from ..gguf_file import GGUFFile
from .app import app
from .common import (CtxOption, ExpertsOption, VerboseOption, check_experts, context_size,
                     out_console, resolve_model)

# One expert's slice of the FFN: merged stacks or per-expert tensors.
_EXPERT_TENSOR = re.compile(r"\.ffn_(gate|up|down)(_exps|\.\d+)\.weight$")
KV_BYTES_PER_VALUE = 4  # the KV cache holds float32


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def per_token_share(name: str, c: ModelConfig, n_expert_used: int) -> float:
    """The fraction of a tensor that generating one token reads."""
    if c.is_moe and _EXPERT_TENSOR.search(name):
        return n_expert_used / c.n_expert
    if name == "token_embd.weight" and not c.tied_output:
        return 1 / c.n_vocab  # one row looked up
    return 1.0


def kv_cache_bytes(c: ModelConfig, n_ctx: int) -> int:
    return 2 * c.n_layer * n_ctx * c.n_head_kv * c.head_dim * KV_BYTES_PER_VALUE


@app.command()
def info(
    model: Annotated[Optional[str], typer.Argument(
        envvar="MIXLOCAL_MODEL", show_default=False,
        help="GGUF file or known model name (default: the default model).")] = None,
    ctx: CtxOption = None,
    experts: ExpertsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Architecture, size, tokenizer, tensor types and memory needs of a model."""
    path = resolve_model(model)
    f = GGUFFile(path)
    c = ModelConfig.from_gguf(f)
    check_experts(experts, c)
    k = experts or c.n_expert_used
    n_ctx = context_size(ctx, c.n_ctx_train)

    params = active = read = 0.0
    by_type: dict[str, list[float]] = defaultdict(lambda: [0, 0])
    for t in f.tensors.values():
        n = float(np.prod(t.shape))
        share = per_token_share(t.name, c, k)
        params += n
        active += n * share
        read += t.nbytes * share
        by_type[t.qtype.name][0] += 1
        by_type[t.qtype.name][1] += t.nbytes
    if c.tied_output:  # the embedding is also the output projection
        row = f.tensors["token_embd.weight"]
        active += float(np.prod(row.shape)) / c.n_vocab

    tok_model = f.get("tokenizer.ggml.model", "none")
    pre = f.get("tokenizer.ggml.pre")
    tokens = f.get("tokenizer.ggml.tokens") or []
    template = f.get("tokenizer.chat_template")
    kv = kv_cache_bytes(c, n_ctx)

    about = Table.grid(padding=(0, 2))
    about.add_column(style="bold")
    about.add_column()
    about.add_row("model", c.name or path.name)
    about.add_row("file", str(path))
    about.add_row("architecture", f"{f.get('general.architecture')} "
                                  f"({'mixture of experts' if c.is_moe else 'dense'})")
    about.add_row("parameters", f"{human_count(params)} ({human_count(active)} active per token)")
    about.add_row("experts", f"{c.n_expert}, {k} used per token" if c.is_moe else "none (dense)")
    about.add_row("layers", f"{c.n_layer}, embedding {c.n_embd}, feed-forward {c.n_ff}, "
                            f"{c.n_head} heads ({c.n_head_kv} KV heads of {c.head_dim})")
    about.add_row("context", f"{c.n_ctx_train} tokens trained; {n_ctx} for a run (-c)")
    about.add_row("tokenizer", f"{tok_model}{f' ({pre})' if pre else ''}, "
                               f"{len(tokens)} tokens")
    fallback = "ChatML" if fallback_template(tokens)[1] == "chatml" else "Mistral [INST]"
    about.add_row("chat template", "yes" if template else f"no (the {fallback} format is used)")
    about.add_row("file size", human_bytes(f.file_size))

    types = Table(title="Tensor types", title_justify="left", box=None, padding=(0, 2))
    for col in ("type", "tensors", "bytes", "share"):
        types.add_column(col, justify="left" if col == "type" else "right")
    for name, (count, nbytes) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
        types.add_row(name, str(count), human_bytes(nbytes),
                      f"{100 * nbytes / max(1, sum(b for _, b in by_type.values())):.1f}%")

    memory = Table(title="Memory", title_justify="left", box=None, padding=(0, 2),
                   show_header=False)
    memory.add_column()
    memory.add_column(justify="right")
    memory.add_row("weights read per token", human_bytes(read))
    memory.add_row(f"KV cache at {n_ctx} tokens", human_bytes(kv))
    memory.add_row("RAM for a run (weights mapped + KV)", human_bytes(f.file_size + kv))

    console = out_console()
    for part in (about, types, memory):
        console.print(part)
        console.print()
