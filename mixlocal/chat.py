"""Conversations -> the prompt a model expects, from the chat template in its GGUF file.

The template (Jinja, written by whoever made the file, so untrusted) runs in Jinja's
ImmutableSandboxedEnvironment with a time limit, an output limit and no access to
private attributes. Only what the template writes itself may become control tokens:
the text of the messages is always tokenized as plain text, so a user who types
"[INST]" or "<|im_start|>" gets ordinary tokens.
"""

from __future__ import annotations

import re
import secrets
import sys
import time
from contextlib import contextmanager
from datetime import datetime

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from .gguf_file import GGUFFile
from .tokenizer import Tokenizer

TIME_LIMIT_S = 2.0
MAX_OUTPUT_CHARS = 4_000_000

# Mixtral-8x7B-Instruct's own template: no system role (see _fold_system).
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def fallback_template(pieces) -> tuple[str, str]:
    """The format of the model's family, for a file without a template: (template, name)."""
    if "<|im_start|>" in pieces:
        return CHATML_TEMPLATE, "chatml"
    return MISTRAL_TEMPLATE, "mistral"


class ChatTemplateError(ValueError):
    """The chat template is invalid, rejects the conversation, or misbehaves."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, stricter: unsafe attributes fail loudly, and no huge values."""

    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj, attribute):
        raise SecurityError(f"access to attribute {attribute!r} of "
                            f"{type(obj).__name__!r} object is unsafe")

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) \
                        and len(seq) * n > MAX_OUTPUT_CHARS:
                    raise SecurityError("the template builds a value that is too large")
        elif isinstance(left, int) and isinstance(right, int) and abs(right) > 4096 \
                and abs(left) > 1:
            raise SecurityError("the template computes a power that is too large")
        return super().call_binop(context, operator, left, right)


def _raise_exception(message: str):
    raise ChatTemplateError(f"the chat template rejects this conversation: {message}")


@contextmanager
def _time_limit(seconds: float):
    """Abort Python code running in this thread after `seconds` (a template that loops)."""
    deadline = time.monotonic() + seconds

    def check(frame, event, arg):
        if time.monotonic() > deadline:
            raise ChatTemplateError(f"the chat template ran for more than {seconds:g} s")
        return check

    previous = sys.gettrace()
    sys.settrace(check)
    try:
        yield
    finally:
        sys.settrace(previous)


def _fold_system(messages: list[dict]) -> list[dict]:
    """Leading system messages joined into the first user turn, as mistral-common does."""
    n = 0
    while n < len(messages) and messages[n]["role"] == "system":
        n += 1
    if n == 0 or n == len(messages) or messages[n]["role"] != "user":
        return messages
    system = "\n\n".join(m["content"] for m in messages[:n])
    first = {**messages[n], "content": system + "\n\n" + messages[n]["content"]}
    return [first, *messages[n + 1:]]


def _marker(tag: str, index) -> str:
    """What stands in for a message's content while the template renders (private-use
    characters: a template's trim or escape leaves them alone)."""
    return f"\ue000{tag}:{index}\ue001"


class ChatFormat:
    """A model's chat format: `render` gives the prompt text, `encode` its token ids."""

    def __init__(self, template: str, tokenizer: Tokenizer, source: str):
        self.tokenizer = tokenizer
        self.source = source  # "model file", or "fallback (mistral)" / "fallback (chatml)"
        env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.globals.update(raise_exception=_raise_exception,
                           strftime_now=lambda fmt: datetime.now().strftime(fmt))
        try:
            self._template = env.from_string(template)
        except TemplateError as e:
            raise ChatTemplateError(f"invalid chat template ({source}): {e}") from None
        tok = tokenizer
        self._names = {
            "bos_token": tok.piece(tok.bos_id) if tok.bos_id is not None else "",
            "eos_token": tok.piece(tok.eos_id) if tok.eos_id is not None else ""}

    @classmethod
    def from_gguf(cls, f: GGUFFile, tokenizer: Tokenizer) -> ChatFormat:
        template = f.get("tokenizer.chat_template")
        if isinstance(template, str) and template.strip():
            return cls(template, tokenizer, "model file")
        template, name = fallback_template(tokenizer.special_pieces)
        return cls(template, tokenizer, f"fallback ({name})")

    # --- rendering ---------------------------------------------------------------------

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        out, size = [], 0
        try:
            with _time_limit(TIME_LIMIT_S):
                for chunk in self._template.generate(
                        messages=messages, add_generation_prompt=add_generation_prompt,
                        **self._names):
                    size += len(chunk)
                    if size > MAX_OUTPUT_CHARS:
                        raise ChatTemplateError("the chat template writes more than "
                                                f"{MAX_OUTPUT_CHARS} characters")
                    out.append(chunk)
        except ChatTemplateError:
            raise
        except RecursionError:
            raise ChatTemplateError("the chat template recurses without end") from None
        except Exception as e:  # untrusted code: any failure is the template's
            raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") \
                from None
        return "".join(out)

    def _accepted(self, messages, add_generation_prompt: bool) -> tuple[list[dict], str]:
        """The messages as the template takes them (a system turn folded into the first
        user turn if the template rejects it), and the text it renders for them."""
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        if not messages:
            raise ChatTemplateError("no messages to format")
        try:
            return messages, self._render(messages, add_generation_prompt)
        except ChatTemplateError:
            folded = _fold_system(messages)
            if folded is messages:
                raise
            return folded, self._render(folded, add_generation_prompt)

    def render(self, messages, add_generation_prompt: bool = True) -> str:
        """The prompt text for messages ({"role", "content"} dicts)."""
        return self._accepted(messages, add_generation_prompt)[1]

    # --- tokenizing --------------------------------------------------------------------

    def encode(self, messages, add_generation_prompt: bool = True) -> list[int]:
        """The token ids to feed the model for messages, BOS included where it belongs.

        The template is rendered with each message's content replaced by a unique
        marker; control tokens are looked for only in the template's own text. For
        SentencePiece the text is also cut where each turn starts and each run is
        tokenized on its own, a leading space written by the template standing for
        the dummy prefix: this is how mistral-common builds Mixtral's prompts.
        """
        messages, text = self._accepted(messages, add_generation_prompt)
        tag = secrets.token_hex(4)
        marked = [{**m, "content": _marker(tag, i)} for i, m in enumerate(messages)]
        skeleton = self._render(marked, add_generation_prompt)
        cuts = self._turn_starts(marked, skeleton) if self.tokenizer.space_prefix else []
        return self._tokenize(self._parts(skeleton, tag, messages, text, cuts))

    def _turn_starts(self, marked: list[dict], skeleton: str) -> list[int]:
        """Where each turn after the first starts in the rendered text, when the template
        renders a conversation's beginnings as prefixes of the whole."""
        cuts = []
        for k in range(1, len(marked)):
            try:
                head = self._render(marked[:k], False)
            except ChatTemplateError:
                continue
            if skeleton.startswith(head) and (not cuts or len(head) > cuts[-1]):
                cuts.append(len(head))
        return cuts

    @staticmethod
    def _parts(skeleton: str, tag: str, messages: list[dict], text: str, cuts: list[int]):
        """The rendered prompt as ("template", str), ("content", str) and None (a cut)."""
        pieces = re.split(_marker(tag, "(\\d+)"), skeleton)
        contents = [m["content"] for m in messages]
        # A template may trim the content; use what it made of it.
        for form in (contents, [c.strip() for c in contents]):
            if "".join(p if j % 2 == 0 else form[int(p)]
                       for j, p in enumerate(pieces)) == text:
                contents = form
                break
        parts, pos, pending = [], 0, list(cuts)
        for j, p in enumerate(pieces):
            if j % 2:  # a marker: the content it stands for
                parts.append(("content", contents[int(p)]))
                pos += len(_marker(tag, p))
                continue
            start = 0
            while pending and pending[0] <= pos + len(p):  # turns start in template text
                at = pending.pop(0) - pos
                parts += [("template", p[start:at]), None]
                start = at
            parts.append(("template", p[start:]))
            pos += len(p)
        return parts

    def _tokenize(self, parts) -> list[int]:
        tok = self.tokenizer
        ids: list[int] = []
        run: list[str] = []
        space_from_template = False

        def flush():
            text = "".join(run)
            if tok.space_prefix and space_from_template:
                text = text[1:]  # the space SentencePiece's dummy prefix stands for
            if text:
                ids.extend(tok.encode_plain(text))
            run.clear()

        for part in parts:
            if part is None:
                flush()
                continue
            kind, text = part
            pieces = tok.split_special(text) if kind == "template" else [text]
            for piece in pieces:
                if isinstance(piece, int):
                    flush()
                    ids.append(piece)
                elif piece:
                    if not run:
                        space_from_template = kind == "template" and piece[0] == " "
                    run.append(piece)
        flush()
        if tok.add_bos and tok.bos_id is not None and ids[:1] != [tok.bos_id]:
            ids.insert(0, tok.bos_id)
        return ids
