"""Text <-> token ids from a GGUF file alone, exactly as the model was trained.

`Tokenizer.from_gguf(f)` builds the file's tokenizer: `llama` (SentencePiece, see
tokenizer_spm) or `gpt2` (byte-level BPE, see tokenizer_bpe). Both families share
what sits around the subword model: control tokens (recognised in text only when
asked, so typed text never becomes one), BOS/EOS, stop tokens, and decoding through
one byte table, so that streamed text equals decoded text.
"""

from __future__ import annotations

import codecs
import re

import numpy as np

from .gguf_file import GGUFError, GGUFFile
from .tokenizer_bpe import ByteLevelBPEBackend
from .tokenizer_spm import CONTROL, NORMAL, UNKNOWN, SentencePieceBackend

# Besides EOS, pieces that end a turn in the chat formats of common families.
END_OF_TURN_PIECES = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>",
                      "<end_of_turn>", "<|endoftext|>")


class Tokenizer:
    """A model's tokenizer. Build it with `Tokenizer.from_gguf(f)`."""

    def __init__(self, backend, tokens: list[str], types: np.ndarray, *, bos_id: int | None,
                 eos_id: int | None, add_bos: bool, add_eos: bool, eot_ids=()):
        self._backend = backend
        self._tokens = tokens
        self._bytes = backend.token_bytes
        self.n_vocab = len(tokens)
        self.bos_id, self.eos_id = bos_id, eos_id
        self.add_bos, self.add_eos = add_bos, add_eos
        # SentencePiece's dummy prefix: one space before the text that decoding drops.
        self.space_prefix: bool = backend.space_prefix
        stops = {eos_id, *eot_ids}
        stops |= {i for i in np.flatnonzero(types == CONTROL).tolist()
                  if tokens[i] in END_OF_TURN_PIECES}
        self.stop_ids: frozenset[int] = frozenset(i for i in stops if i is not None)
        # With parse_special, control (and unknown) pieces are matched longest first.
        special = [(tokens[i], i) for i in np.flatnonzero((types == CONTROL) |
                                                          (types == UNKNOWN)).tolist()
                   if tokens[i]]
        self._special_id = dict(reversed(special))  # first id wins for a repeated piece
        self.special_pieces = frozenset(self._special_id)
        names = sorted(self._special_id, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, names))) if names else None

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> Tokenizer:
        kind = f.get("tokenizer.ggml.model")
        tokens = f.get("tokenizer.ggml.tokens")
        if kind is None or not tokens:
            raise GGUFError(f"{f.path} has no tokenizer (tokenizer.ggml.model and "
                            f".tokens are missing)")
        types = f.get("tokenizer.ggml.token_type")
        types = (np.full(len(tokens), NORMAL, np.int32) if types is None
                 else np.asarray(types, np.int32))
        if len(types) != len(tokens):
            raise GGUFError("tokenizer.ggml.tokens and .token_type differ in length")

        def token_id(key: str) -> int | None:
            value = f.get(f"tokenizer.ggml.{key}")
            if value is None or not 0 <= int(value) < len(tokens):
                return None
            return int(value)

        bos, eos = token_id("bos_token_id"), token_id("eos_token_id")
        if kind == "llama":
            backend = SentencePieceBackend(
                tokens, f.get("tokenizer.ggml.scores"), types,
                add_space_prefix=bool(f.get("tokenizer.ggml.add_space_prefix", True)),
                unk_id=token_id("unknown_token_id") or 0,
                bos_id=-1 if bos is None else bos, eos_id=-1 if eos is None else eos)
            default_bos = True
        elif kind == "gpt2":
            backend = ByteLevelBPEBackend(tokens, types, f.get("tokenizer.ggml.merges"),
                                          f.get("tokenizer.ggml.pre"))
            default_bos = False
        else:
            raise GGUFError(f"unsupported tokenizer {kind!r} (tokenizer.ggml.model); "
                            f"mixlocal knows llama (SentencePiece) and gpt2 (BPE)")
        add_bos = bool(f.get("tokenizer.ggml.add_bos_token", default_bos)) and bos is not None
        add_eos = bool(f.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
        eot = (token_id("eot_token_id"), token_id("eom_token_id"))
        return cls(backend, list(tokens), types, bos_id=bos, eos_id=eos, add_bos=add_bos,
                   add_eos=add_eos, eot_ids=eot)

    # --- text -> ids -------------------------------------------------------------------

    def split_special(self, text: str) -> list[str | int]:
        """Cut text at control-token pieces: text runs (str) and token ids (int)."""
        if self._special_re is None:
            return [text] if text else []
        out: list[str | int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                out.append(text[pos:m.start()])
            out.append(self._special_id[m.group()])
            pos = m.end()
        if pos < len(text):
            out.append(text[pos:])
        return out

    def encode_plain(self, text: str) -> list[int]:
        """Ids of text with no control tokens in it; SentencePiece adds its dummy prefix."""
        return self._backend.encode(text)

    def encode(self, text: str, *, add_bos: bool | None = None,
               parse_special: bool = False) -> list[int]:
        """Token ids of text.

        add_bos: None follows the model (BOS, and EOS for the few models that ask for
        it); False adds neither; True adds BOS. parse_special: turn control-token
        pieces written in the text ("<s>", "<|im_start|>") into those tokens; leave it
        False for text a user typed.
        """
        follow_model = add_bos is None
        bos = self.add_bos if follow_model else add_bos
        ids = [self.bos_id] if bos and self.bos_id is not None else []
        if parse_special:
            # As llama.cpp: each text run (after the start or a control token) is
            # tokenized on its own, so SentencePiece gives each its dummy prefix.
            for part in self.split_special(text):
                ids += [part] if isinstance(part, int) else self.encode_plain(part)
        else:
            ids += self.encode_plain(text)
        if follow_model and self.add_eos:
            ids.append(self.eos_id)
        return ids

    # --- ids -> text -------------------------------------------------------------------

    def piece(self, token_id: int) -> str:
        """The token's vocabulary entry as stored ("▁the", "<0x0A>", "<s>", "Ġthe")."""
        self._check(token_id)
        return self._tokens[token_id]

    def decode(self, ids) -> str:
        """The text of ids; control tokens print nothing."""
        d = self.decoder()
        return "".join([d.feed(i) for i in ids]) + d.flush()

    def decoder(self) -> StreamDecoder:
        """A decoder for text that arrives one token at a time."""
        return StreamDecoder(self)

    def _check(self, token_id: int) -> None:
        if not 0 <= token_id < self.n_vocab:
            raise ValueError(f"token id {token_id} is outside the vocabulary "
                             f"(0..{self.n_vocab - 1})")


class StreamDecoder:
    """Turns ids into text as they arrive, never splitting a UTF-8 character.

    Byte-fallback tokens of one character are held back until the character is
    complete. Concatenating every `feed` and the final `flush` equals `decode`.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._drop_space = tokenizer.space_prefix  # until the first text arrives

    def feed(self, token_id: int) -> str:
        self._tok._check(token_id)
        data = self._tok._bytes[token_id]
        if self._drop_space and data:
            self._drop_space = False
            if data.startswith(b" "):
                data = data[1:]
        return self._utf8.decode(data)

    def flush(self) -> str:
        """Whatever is held back; an incomplete character becomes U+FFFD."""
        return self._utf8.decode(b"", final=True)
