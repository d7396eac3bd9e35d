"""`mixlocal tokenize`: the token ids a model is fed for some text."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Optional

import typer

from ..chat import ChatFormat
from ..gguf_file import GGUFFile
from ..tokenizer import Tokenizer
from .app import app
from .common import ModelOption, UsageError, VerboseOption, err_console, resolve_model


@app.command()
def tokenize(
    text: Annotated[Optional[str], typer.Argument(
        show_default=False, help="Text to tokenize (default: stdin, read as is).")] = None,
    model: ModelOption = None,
    pieces: Annotated[bool, typer.Option(
        "--pieces", help="One token a line: its id and its vocabulary piece.")] = False,
    count: Annotated[bool, typer.Option("--count", help="Only the number of tokens.")] = False,
    chat: Annotated[bool, typer.Option(
        "--chat", help="Tokenize the text as one user turn of the chat template.")] = False,
    verbose: VerboseOption = False,
) -> None:
    """Print the token ids the model is fed for TEXT (BOS included when it adds one)."""
    if pieces and count:
        raise UsageError("--pieces and --count do not go together")
    if text is None:
        if sys.stdin.isatty():
            raise UsageError("give TEXT, or pipe the text on stdin")
        text = sys.stdin.read()

    start = time.perf_counter()
    f = GGUFFile(resolve_model(model))
    tok = Tokenizer.from_gguf(f)
    log = err_console()
    if verbose:
        log.print(f"tokenizer: {f.get('tokenizer.ggml.model')}, {tok.n_vocab} tokens, "
                  f"built in {1000 * (time.perf_counter() - start):.0f} ms", markup=False)
    if chat:
        fmt = ChatFormat.from_gguf(f, tok)
        if verbose:
            log.print(f"chat template: {fmt.source}", markup=False)
        ids = fmt.encode([{"role": "user", "content": text}])
    else:
        ids = tok.encode(text)

    if count:
        print(len(ids))
    elif pieces:
        for i in ids:
            print(f"{i}\t{json.dumps(tok.piece(i), ensure_ascii=False)}")
    else:
        print(" ".join(map(str, ids)))
