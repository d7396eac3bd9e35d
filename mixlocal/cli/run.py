"""`mixlocal run`: one prompt, one streamed answer; text piped on stdin joins the prompt."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from .app import app
from .common import (GenOptions, UsageError, err_console, open_session, stream_answer,
                     turn_stats, with_gen_options)


def read_prompt(words: list[str] | None) -> str:
    """stdin's text (when it is not a terminal) first, then the words, as `llm` does."""
    parts = []
    if sys.stdin is not None and not sys.stdin.isatty():  # None: no stdin at all
        data = sys.stdin.buffer.read()
        if b"\0" in data:
            raise UsageError("stdin is not text (it holds NUL bytes)")
        try:
            parts.append(data.decode("utf-8").rstrip("\n"))
        except UnicodeDecodeError:
            raise UsageError("stdin is not UTF-8 text") from None
    if words:
        parts.append(" ".join(words))
    text = "\n".join(p for p in parts if p)
    if not text.strip():
        raise UsageError("empty prompt: give one as an argument or on stdin")
    return text


@app.command()
@with_gen_options
def run(
    prompt: Annotated[Optional[list[str]], typer.Argument(
        show_default=False, help="The prompt (after any text piped on stdin).")] = None,
    raw: Annotated[bool, typer.Option(
        "--raw", help="Send the text as it is, without the chat template.")] = False,
    *,
    opts: GenOptions,
) -> None:
    """Answer one prompt, streaming the answer to stdout.

    cat notes.txt | mixlocal run "Summarise this:"
    """
    text = read_prompt(prompt)
    session = open_session(opts)
    pieces = session.complete(text) if raw else session.send(text)
    stream_answer(session, pieces, stream=not opts.no_stream)
    if opts.verbose:
        err_console().print(turn_stats(session))
