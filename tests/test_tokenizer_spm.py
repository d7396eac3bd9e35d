"""The llama (SentencePiece) tokenizer against sentencepiece itself, on Mixtral's vocabulary."""

from __future__ import annotations

import time

import pytest
from data.corpus import CORPUS
from tokenizer_refs import mixtral_vocab, reference_processor  # noqa: F401  (fixture)

from mixlocal.gguf_file import GGUFError, GGUFFile
from mixlocal.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def sp():
    return reference_processor()


@pytest.fixture(scope="module")
def tok(mixtral_vocab):
    return Tokenizer.from_gguf(GGUFFile(mixtral_vocab()))


def test_corpus_is_large_and_varied():
    assert len(set(CORPUS)) >= 200
    assert "" in CORPUS and any("\t" in s for s in CORPUS) and any("  " in s for s in CORPUS)


def test_ids_equal_sentencepiece_on_the_corpus(tok, sp):
    mismatches = [s for s in CORPUS if tok.encode(s, add_bos=False) != sp.encode(s)]
    assert mismatches == []


def test_bos_follows_the_model(tok, sp):
    assert tok.add_bos and not tok.add_eos
    assert tok.encode("Hello world") == [sp.bos_id(), *sp.encode("Hello world")]
    assert tok.encode("") == [sp.bos_id()]
    assert tok.encode("x", add_bos=False) == sp.encode("x")


def test_decode_equals_sentencepiece(tok, sp):
    for s in CORPUS:
        ids = sp.encode(s)
        assert tok.decode(ids) == sp.decode(ids), s
        if "\u2581" not in s:  # sentencepiece writes "▁" back as a space
            assert tok.decode(ids) == s


def test_streaming_equals_decoding_and_never_splits_a_character(tok):
    for s in CORPUS:
        ids = tok.encode(s)
        d = tok.decoder()
        pieces = [d.feed(i) for i in ids]
        assert "".join(pieces) + d.flush() == tok.decode(ids), s
        assert all("\ufffd" not in p for p in pieces), s


def test_byte_fallback_pieces_wait_for_the_whole_character(tok):
    ids = tok.encode("👩", add_bos=False)
    byte_ids = [i for i in ids if tok.piece(i).startswith("<0x")]
    assert len(byte_ids) == 4  # 👩 is not in the vocabulary: four UTF-8 bytes
    d = tok.decoder()
    out = [d.feed(i) for i in ids]
    assert out[-1] == "👩" and "".join(out[:-1]) == ""


def test_leading_space_dropped_once_as_sentencepiece_does(tok, sp):
    ids = [tok.bos_id, *sp.encode("Hello"), tok.eos_id, *sp.encode("world")]
    assert tok.decode(ids) == "Hello world" == sp.decode(ids)


def test_control_tokens_only_with_parse_special(tok, sp):
    text = "<s>[INST] hi [/INST]</s>"
    assert tok.encode(text, add_bos=False) == sp.encode(text)
    assert tok.encode(text, add_bos=False, parse_special=True) == [
        sp.bos_id(), *sp.encode("[INST] hi [/INST]"), sp.eos_id()]
    assert tok.split_special("a</s>b") == ["a", tok.eos_id, "b"]


def test_ids_and_pieces(tok):
    assert tok.n_vocab == 32000
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.stop_ids == {2}
    assert tok.piece(1) == "<s>" and tok.piece(13) == "<0x0A>"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.piece(32000)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([-1])


def test_without_space_prefix_no_dummy_prefix_is_added(mixtral_vocab, sp):
    tok = Tokenizer.from_gguf(GGUFFile(mixtral_vocab(add_space_prefix=False)))
    assert tok.encode(" Hello world", add_bos=False) == sp.encode("Hello world")
    assert tok.decode(sp.encode("Hello")) == " Hello"


def test_building_from_a_32k_vocabulary_is_fast(mixtral_vocab):
    f = GGUFFile(mixtral_vocab())
    start = time.perf_counter()
    Tokenizer.from_gguf(f)
    assert time.perf_counter() - start < 1.0  # about 0.08 s measured here


def test_missing_or_unknown_tokenizer_is_a_clear_error(tmp_path):
    import gguf

    def write(name, **keys):
        w = gguf.GGUFWriter(str(tmp_path / name), "llama")
        if "model" in keys:
            w.add_tokenizer_model(keys["model"])
            w.add_token_list(["a", "b"])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return GGUFFile(tmp_path / name)

    with pytest.raises(GGUFError, match="has no tokenizer"):
        Tokenizer.from_gguf(write("none.gguf"))
    with pytest.raises(GGUFError, match="unsupported tokenizer 'rwkv'"):
        Tokenizer.from_gguf(write("rwkv.gguf", model="rwkv"))
