"""`mixlocal perplexity`: the standard quality number of a model on a text file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..perplexity import evaluate, windows
from .app import app
from .common import (ExpertsOption, ModelOption, ThreadsOption, UsageError, VerboseOption,
                     check_experts, err_console, load_model, plain_output)


@app.command()
def perplexity(
    file: Annotated[Path, typer.Argument(dir_okay=False, show_default=False,
                                         help="A text file to score.")],
    model: ModelOption = None,
    ctx: Annotated[int, typer.Option(
        "--ctx", "-c", min=4, help="Window size in tokens; the second half of each is scored.")
    ] = 512,
    chunks: Annotated[Optional[int], typer.Option(
        "--chunks", min=1, show_default=False, help="Score only the first N windows.")] = None,
    experts: ExpertsOption = None,
    threads: ThreadsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Perplexity of a text file, computed as llama.cpp's perplexity tool does."""
    text = file.read_text(encoding="utf-8")
    if not text.strip():
        raise UsageError(f"{file}: the file is empty")
    _, m, tokenizer = load_model(model, threads)
    check_experts(experts, m.config)
    # As llama.cpp: BOS (when the model adds one) starts the text and every window.
    ids = tokenizer.encode(text, add_bos=tokenizer.add_bos)
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    try:
        batches = windows(ids, ctx, bos)[:chunks]
    except ValueError as e:
        raise UsageError(f"{file}: {e}") from None

    console = err_console()
    console.print(f"{file.name}: {len(ids)} tokens, {len(batches)} windows of {ctx}, "
                  f"scoring {ctx - ctx // 2 - 1} tokens of each")
    final = None
    if plain_output() or not console.is_terminal:
        for final in evaluate(m, batches, n_expert_used=experts):
            console.print(f"[{final.window}/{final.n_windows}] PPL {final.ppl:.4f}")
    else:
        with Progress(TextColumn("perplexity"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[ppl]}"), TimeRemainingColumn(),
                      console=console) as progress:
            task = progress.add_task("", total=len(batches), ppl="")
            for final in evaluate(m, batches, n_expert_used=experts):
                progress.update(task, completed=final.window,
                                ppl=f"PPL {final.ppl:.4f} ± {final.stderr:.4f}")
    print(f"Final estimate: PPL = {final.ppl:.4f} +/- {final.stderr:.5f}")
