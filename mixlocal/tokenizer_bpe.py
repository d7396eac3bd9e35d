"""The `gpt2` tokenizer: byte-level BPE from GGUF tokens and merges.

The `tokenizers` package does the merging; what llama.cpp calls the pre-tokenizer
(`tokenizer.ggml.pre`, the regular expressions that cut text into words first) is
rebuilt here by name, with llama.cpp's expressions.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from .gguf_file import GGUFError
from .tokenizer_spm import CONTROL, UNUSED, USER_DEFINED

_GPT2_WORDS = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"
               r"|\s+(?!\S)|\s+")
_LLAMA3_WORDS = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _gpt2():
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2():
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()])


def _llama3():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_WORDS), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# tokenizer.ggml.pre -> (pre-tokenizer factory, ignore_merges), grouped as llama.cpp does.
PRE_TOKENIZERS = {
    "gpt-2": (_gpt2, False),
    "mpt": (_gpt2, False),
    "olmo": (_gpt2, False),
    "smollm": (_digits_then_gpt2, False),
    "starcoder": (_digits_then_gpt2, False),
    "refact": (_digits_then_gpt2, False),
    "codeshell": (_digits_then_gpt2, False),
    "llama-bpe": (_llama3, True),
    "llama3": (_llama3, True),
}


def _byte_chars() -> dict[int, int]:
    """GPT-2's printable stand-in characters (as code points) -> the bytes they stand for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[256 + extra] = b
            extra += 1
    return table


_BYTE_CHARS = _byte_chars()


def _token_bytes(token: str, kind: int) -> bytes:
    if kind in (CONTROL, UNUSED):
        return b""
    if kind == USER_DEFINED:
        return token.encode("utf-8")
    try:
        return token.translate(_BYTE_CHARS).encode("latin-1")
    except UnicodeEncodeError:  # not byte-level: stored as plain text, as added tokens are
        return token.encode("utf-8")


class ByteLevelBPEBackend:
    """Plain text <-> ids for a byte-level BPE vocabulary (no control tokens)."""

    space_prefix = False

    def __init__(self, tokens: list[str], types, merges: list[str] | None, pre: str | None):
        if not merges:
            raise GGUFError("gpt2 tokenizer without tokenizer.ggml.merges")
        pre = pre or "gpt-2"
        if pre not in PRE_TOKENIZERS:
            raise GGUFError(f"unsupported pre-tokenizer {pre!r} (tokenizer.ggml.pre); "
                            f"mixlocal knows: {', '.join(sorted(PRE_TOKENIZERS))}")
        make_pre, ignore_merges = PRE_TOKENIZERS[pre]
        vocab = {t: i for i, t in reversed(list(enumerate(tokens)))}  # first id wins
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        self._hf = HFTokenizer(models.BPE(vocab, pairs, ignore_merges=ignore_merges))
        self._hf.pre_tokenizer = make_pre()
        kinds = [int(k) for k in types]
        # User-defined tokens are always whole tokens (llama.cpp does the same).
        self._hf.add_tokens([AddedToken(t, normalized=False, special=False)
                             for t, k in zip(tokens, kinds) if k == USER_DEFINED])
        self.token_bytes = [_token_bytes(t, k) for t, k in zip(tokens, kinds)]

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids
