"""The gpt2 (byte-level BPE) tokenizer on SmolLM2-135M-Instruct's real vocabulary."""

from __future__ import annotations

import pytest
from data.corpus import CORPUS
from tokenizer_refs import transformers_tokenizer

from mixlocal.gguf_file import GGUFError, GGUFFile
from mixlocal.tokenizer import Tokenizer
from mixlocal.tokenizer_bpe import PRE_TOKENIZERS, ByteLevelBPEBackend

regex = pytest.importorskip("regex", reason="llama.cpp's pre-tokenizer expressions need "
                                            "the regex package's \\p{...} classes")

IM_START, IM_END = 1, 2  # <|im_start|>, <|im_end|> in SmolLM2's vocabulary

# llama.cpp's expressions (llama-vocab.cpp), applied one after the other; the text
# between matches is kept as pieces too.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA_CPP = {
    "smollm": [r"\p{N}", GPT2],
    "llama-bpe": [r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
                  r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+"],
}


def llama_cpp_split(text: str, expressions: list[str]) -> list[str]:
    pieces = [text] if text else []
    for expr in expressions:
        out = []
        for piece in pieces:
            pos = 0
            for m in regex.finditer(expr, piece):
                out += [piece[pos:m.start()], m.group()]
                pos = m.end()
            out.append(piece[pos:])
        pieces = [p for p in out if p]
    return pieces


@pytest.fixture(scope="module")
def smol_file(smollm2_path):
    return GGUFFile(smollm2_path)


@pytest.fixture(scope="module")
def tok(smol_file):
    return Tokenizer.from_gguf(smol_file)


@pytest.fixture(scope="module")
def hf(smollm2_path):
    return transformers_tokenizer(smollm2_path)


def test_metadata(tok, smol_file):
    assert smol_file.get("tokenizer.ggml.pre") == "smollm"
    assert tok.piece(IM_START) == "<|im_start|>" and tok.piece(IM_END) == "<|im_end|>"
    assert not tok.add_bos and tok.encode("hi")[:1] != [tok.bos_id]
    assert {IM_END, 0} <= tok.stop_ids  # <|im_end|> is EOS; <|endoftext|> also ends


@pytest.mark.parametrize("pre", sorted(LLAMA_CPP))
def test_pre_tokenizer_splits_as_llama_cpp(pre):
    make, _ = PRE_TOKENIZERS[pre]
    pre_tokenizer = make()
    for s in CORPUS:
        got = [s[a:b] for _, (a, b) in pre_tokenizer.pre_tokenize_str(s)]
        assert got == llama_cpp_split(s, LLAMA_CPP[pre]), s


def test_ids_equal_reference_bpe_on_the_corpus(tok, hf):
    """Reference: llama.cpp's first split (each digit alone) with transformers' BPE."""
    for s in CORPUS:
        want = []
        for chunk in llama_cpp_split(s, [r"\p{N}"]):
            want += hf(chunk, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert tok.encode(s) == want, s


def test_round_trip_and_streaming(tok):
    for s in CORPUS:
        ids = tok.encode(s)
        assert tok.decode(ids) == s
        d = tok.decoder()
        pieces = [d.feed(i) for i in ids]
        assert "".join(pieces) + d.flush() == s
        assert all("\ufffd" not in p for p in pieces), s


def test_special_tokens_only_from_parse_special(tok):
    control = set(range(17))  # SmolLM2's control tokens are ids 0..16
    for s in CORPUS:
        assert not control & set(tok.encode(s)), s
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>", parse_special=True)
    assert ids == [IM_START, *tok.encode("user\nhi"), IM_END]
    assert tok.decode(ids) == "user\nhi"  # control tokens print nothing


def test_unsupported_pre_tokenizer_is_named(smol_file):
    tokens = smol_file.get("tokenizer.ggml.tokens")
    types = smol_file.get("tokenizer.ggml.token_type")
    merges = smol_file.get("tokenizer.ggml.merges")
    with pytest.raises(GGUFError, match="unsupported pre-tokenizer 'qwen2'.*smollm"):
        ByteLevelBPEBackend(tokens, types, merges, "qwen2")
    with pytest.raises(GGUFError, match="without tokenizer.ggml.merges"):
        ByteLevelBPEBackend(tokens, types, None, "smollm")
