"""The `mixlocal` Typer application; each command lives in its own module.

`main` turns every expected failure into one line on stderr and an exit status:
2 for a bad option or input, 1 for anything else, 130 after Ctrl-C. A traceback is
shown only with -v/--verbose.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer
from typer.exceptions import TyperException

from .. import __version__

app = typer.Typer(
    name="mixlocal",
    help="Run Mixtral-style mixture-of-experts GGUF models locally on a CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _version(value: bool) -> None:
    if value:
        print(f"mixlocal {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Run Mixtral-style mixture-of-experts GGUF models locally on a CPU."""


# Each module registers its command; --help lists them in this order.
from . import run  # noqa: E402,F401,I001
from . import chat, info  # noqa: E402,F401
from . import perplexity, route  # noqa: E402,F401
from . import tokenize  # noqa: E402,F401
from .common import UsageError  # noqa: E402


def _message(e: BaseException) -> str:
    if isinstance(e, UnicodeDecodeError):
        return "input is not UTF-8 text"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e) or type(e).__name__


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    options = args[:args.index("--")] if "--" in args else args
    verbose = "-v" in options or "--verbose" in options
    try:
        code = app(args=args, prog_name="mixlocal", standalone_mode=False)
    except TyperException as e:  # a usage error found while parsing the command line
        if type(e).__name__ == "NoArgsIsHelpError":
            e.ctx.get_help()  # Typer prints it
            code = 0
        else:
            code = _fail(f"{e.format_message()} (see 'mixlocal --help')", e.exit_code,
                         verbose)
    except typer.Abort:
        code = 130
    except BrokenPipeError:
        # The reader went away (`mixlocal run ... | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except UsageError as e:
        code = _fail(_message(e), 2, verbose)
    except KeyboardInterrupt:
        code = 130
    except (ValueError, LookupError, OSError) as e:
        code = _fail(_message(e), 1, verbose)
    except Exception as e:  # a bug: still one line, the traceback with -v
        code = _fail(f"internal error: {type(e).__name__}: {e}", 1, verbose)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    print(f"mixlocal: error: {message}", file=sys.stderr)
    return code
