"""The `mixlocal` Typer application; each command lives in its own module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="mixlocal",
    help="Run Mixtral-style mixture-of-experts GGUF models locally on a CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    app()
