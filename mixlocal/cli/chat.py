"""`mixlocal chat`: a multi-turn conversation in the terminal, as in `ollama run`."""

from __future__ import annotations

import dataclasses
import sys

from ..kv_cache import ContextOverflowError
from .app import app
from .common import (GenOptions, UsageError, err_console, open_session, stream_answer,
                     turn_stats, with_gen_options)

HELP = """\
Commands:
  /set PARAM VALUE   change a setting: temp, top_k, top_p, min_p, repeat_penalty,
                     seed, max_tokens, experts (/set alone shows them)
  /system TEXT       set the system prompt (/system alone clears it)
  /clear             forget the conversation
  /stats             token counts and speeds of the last answer
  /bye               exit (or Ctrl-D)
Write \"\"\" to begin and end a message of several lines.
Ctrl-C stops an answer at the next token and keeps the conversation."""

# /set names -> (SamplerSettings field, type); max_tokens and experts live on the session.
SAMPLER_PARAMS = {"temp": ("temperature", float), "temperature": ("temperature", float),
                  "top_k": ("top_k", int), "top_p": ("top_p", float),
                  "min_p": ("min_p", float), "repeat_penalty": ("repeat_penalty", float),
                  "seed": ("seed", int)}
SESSION_PARAMS = {"max_tokens": "max_tokens", "experts": "n_expert_used"}


def read_message(prompt: str) -> str:
    """One message: a line, or the lines between two \"\"\" marks."""
    line = input(prompt)
    if not line.startswith('"""'):
        return line
    text = line[3:]
    while not text.rstrip().endswith('"""'):
        text += "\n" + input("... " if prompt else "")
    return text.rstrip()[:-3].strip("\n")


def set_param(session, name: str, value: str) -> str:
    """Apply `/set NAME VALUE`; returns what changed."""
    if name in SAMPLER_PARAMS:
        field, kind = SAMPLER_PARAMS[name]
        try:
            session.settings = dataclasses.replace(session.settings, **{field: kind(value)})
        except ValueError as e:
            raise UsageError(f"/set {name}: {e}") from None
        return f"{field} = {getattr(session.settings, field)}"
    if name in SESSION_PARAMS:
        try:
            number = int(value)
        except ValueError:
            raise UsageError(f"/set {name}: {value!r} is not a whole number") from None
        c = session.model.config
        if name == "experts" and not (c.is_moe and 1 <= number <= c.n_expert):
            raise UsageError(f"/set experts: must be in 1..{c.n_expert}" if c.is_moe
                             else "/set experts: this is a dense model")
        setattr(session, SESSION_PARAMS[name], number if number > 0 else None)
        return f"{name} = {value}"
    raise UsageError(f"/set: unknown parameter {name!r} "
                     f"(known: {', '.join([*SAMPLER_PARAMS, *SESSION_PARAMS])})")


def show_settings(session) -> str:
    s = session.settings
    return (f"temp {s.temperature}, top_k {s.top_k}, top_p {s.top_p}, min_p {s.min_p}, "
            f"repeat_penalty {s.repeat_penalty}, seed {s.seed}, "
            f"max_tokens {session.max_tokens or -1}, "
            f"experts {session.n_expert_used or session.model.config.n_expert_used}, "
            f"system {session.system!r}")


def command(session, line: str) -> str | None:
    """Run a /command; returns a message for stderr. Raises EOFError on /bye."""
    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    if name in ("/bye", "/exit", "/quit"):
        raise EOFError
    if name == "/clear":
        session.clear()
        return "Cleared the conversation."
    if name == "/system":
        session.system = arg or None
        return f"System prompt {'set' if arg else 'cleared'}."
    if name == "/set":
        if not arg:
            return show_settings(session)
        param, _, value = arg.partition(" ")
        if not value.strip():
            raise UsageError(f"/set {param}: give a value")
        return set_param(session, param, value.strip())
    if name == "/stats":
        return turn_stats(session)
    if name in ("/help", "/?"):
        return HELP
    raise UsageError(f"unknown command {name} (/help lists them)")


@app.command()
@with_gen_options
def chat(*, opts: GenOptions) -> None:
    """Chat with a model in the terminal (/help inside for commands)."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    session = open_session(opts)
    console = err_console()
    # input() writes its prompt to stdout: only when a person is at the terminal.
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if interactive:
        console.print("Chatting. /help for commands, /bye or Ctrl-D to leave.")
    while True:
        try:
            text = read_message(">>> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            console.print("\nUse Ctrl-D or /bye to leave.")
            continue
        if not text.strip():
            continue
        if text.startswith("/"):
            try:
                message = command(session, text)
            except EOFError:
                break
            except UsageError as e:
                message = f"error: {e}"
            console.print(message, markup=False)
            continue
        try:
            stream_answer(session, session.send(text), stream=not opts.no_stream)
        except KeyboardInterrupt:
            print(flush=True)
            console.print("(stopped)")
        except ContextOverflowError as e:
            console.print(f"error: {e}; /clear starts over (or raise -c)", markup=False)
        if opts.verbose:
            console.print(turn_stats(session), markup=False)
