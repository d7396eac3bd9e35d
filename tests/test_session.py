"""A chat Session keeps the KV cache across turns and stays consistent when interrupted."""

from __future__ import annotations

import pytest

from mixlocal.chat import ChatFormat
from mixlocal.model import Model
from mixlocal.sampling import GREEDY
from mixlocal.session import Session, StopMatcher, common_prefix
from mixlocal.tokenizer import Tokenizer


def open_session(path, **kw) -> Session:
    model = Model.load(path)
    tok = Tokenizer.from_gguf(model.file)
    return Session(model, tok, ChatFormat.from_gguf(model.file, tok), GREEDY, **kw)


def test_stop_matcher_cuts_at_the_first_stop_across_pieces():
    m = StopMatcher(["END", "\n\n"])
    shown = [m.feed(p) for p in ("Hello E", "N", "ough. E", "ND more")]
    assert shown == ["Hello ", "", "ENough. ", ""] and m.stopped
    m = StopMatcher(["STOP"])
    assert m.feed("abc ST") + m.flush() == "abc ST" and not m.stopped


def test_second_turn_reuses_the_cache_and_answers_as_a_fresh_session(tiny_model):
    path = tiny_model("moe", "q8_0")
    s = open_session(path, max_tokens=6)
    first_ids = s.chat_format.encode(s.conversation("Hello world"))
    "".join(s.send("Hello world"))
    in_cache = list(s.cache.tokens)
    assert s.last.prompt_processed == len(first_ids)
    assert in_cache[:len(first_ids)] == first_ids and len(in_cache) > len(first_ids)

    second_ids = s.chat_format.encode(s.conversation("the capital"))
    answer = "".join(s.send("the capital"))
    reused = common_prefix(in_cache, second_ids)
    assert reused >= len(first_ids)  # at least the whole first prompt
    assert s.last.prompt_tokens == len(second_ids)
    assert s.last.prompt_processed == len(second_ids) - reused

    fresh = open_session(path, max_tokens=6)
    fresh.messages = s.messages[:2]
    assert "".join(fresh.send("the capital")) == answer
    assert fresh.last.prompt_processed == len(second_ids)


def test_interrupted_answer_stays_as_shown_and_the_cache_matches(tiny_model):
    s = open_session(tiny_model("moe", "q8_0"), max_tokens=50)
    pieces = s.send("Hello")
    shown = next(pieces) + next(pieces)
    pieces.close()  # what the CLI does on Ctrl-C
    assert s.messages == [{"role": "user", "content": "Hello"},
                          {"role": "assistant", "content": shown}]
    ids = s.cache.tokens
    assert len(ids) == s.cache.length and ids[:s.last.prompt_tokens] == \
        s.chat_format.encode([{"role": "user", "content": "Hello"}])
    s.clear()
    assert s.messages == [] and "".join(s.send("Hello")) != ""


def test_context_overflow_leaves_the_conversation_unchanged(tiny_model):
    s = open_session(tiny_model("moe", "q8_0"), n_ctx=32, max_tokens=4)
    with pytest.raises(ValueError, match="does not fit the context of 32"):
        s.send("the " * 40)
    assert s.messages == []


def test_smollm2_second_turn_processes_only_the_new_turn(smollm2_path):
    s = open_session(smollm2_path, max_tokens=24)
    first_ids = s.chat_format.encode(s.conversation("What is the capital of France?"))
    assert "".join(s.send("What is the capital of France?"))
    in_cache = len(s.cache.tokens)
    # the first prompt and the answer (its last token too, unless max_tokens cut it)
    assert in_cache >= len(first_ids) + s.last.generated - 1
    new_turn = s.chat_format.encode(s.conversation("And of Italy?"))[in_cache:]
    assert "".join(s.send("And of Italy?"))
    assert s.last.prompt_processed == len(new_turn)
    assert s.tokenizer.decode(new_turn).rstrip().endswith("user\nAnd of Italy?\nassistant")
