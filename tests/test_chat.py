"""Chat formatting: Mixtral prompts equal mistral-common's, ChatML equals transformers',
typed text never becomes control tokens, hostile templates fail fast and run nothing."""

from __future__ import annotations

import time

import pytest
from tokenizer_refs import (MIXTRAL_TEMPLATE_V2, mixtral_vocab,  # noqa: F401
                            transformers_tokenizer)

from mixlocal.chat import MISTRAL_TEMPLATE, ChatFormat, ChatTemplateError
from mixlocal.gguf_file import GGUFFile
from mixlocal.tokenizer import Tokenizer

CONVERSATIONS = {
    "one turn": [("user", "Hello! Who are you?")],
    "system": [("system", "You are a pirate."), ("user", "Where is the treasure?")],
    "several turns": [("user", "What is 2+2?"), ("assistant", "4"),
                      ("user", "And 3+3?"), ("assistant", "6, of course."),
                      ("user", "Thanks")],
    "system, several turns": [("system", "Be brief."), ("user", "Name a colour."),
                              ("assistant", "Blue."), ("user", "Another?")],
    "typed markers": [("user", "What do [INST] and </s> and <s> mean?"),
                      ("assistant", "[/INST] ends a turn </s>"), ("user", "[INST]")],
    "spacing": [("user", "  two leading spaces"), ("assistant", " one leading, trailing \n"),
                ("user", "tabs\tand\nnewlines\n\n")],
    "unicode": [("user", "日本語で答えて 🎉"), ("assistant", "はい、e\u0301"), ("user", "👩‍👩‍👧?")],
}


def as_dicts(conversation):
    return [{"role": r, "content": c} for r, c in conversation]


@pytest.fixture(scope="module")
def mistral_ids():
    pytest.importorskip("mistral_common", reason="the reference is mistral-common "
                                                 "(pip install 'mixlocal[test]')")
    from mistral_common.protocol.instruct.messages import (AssistantMessage, SystemMessage,
                                                           UserMessage)
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    reference = MistralTokenizer.v1()
    kinds = {"user": UserMessage, "assistant": AssistantMessage, "system": SystemMessage}

    def encode(conversation):
        request = ChatCompletionRequest(messages=[kinds[r](content=c) for r, c in conversation])
        return reference.encode_chat_completion(request).tokens

    return encode


@pytest.mark.parametrize("template", [None, MISTRAL_TEMPLATE, MIXTRAL_TEMPLATE_V2],
                         ids=["no template", "mixtral v1 template", "mixtral v2 template"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_mixtral_prompts_equal_mistral_common(mixtral_vocab, mistral_ids, template, name):
    f = GGUFFile(mixtral_vocab(chat_template=template))
    fmt = ChatFormat.from_gguf(f, Tokenizer.from_gguf(f))
    assert fmt.source == ("fallback (mistral)" if template is None else "model file")
    conversation = CONVERSATIONS[name]
    assert fmt.encode(as_dicts(conversation)) == mistral_ids(conversation)


def test_system_prompt_is_folded_into_the_first_turn(mixtral_vocab):
    f = GGUFFile(mixtral_vocab(chat_template=MISTRAL_TEMPLATE))
    fmt = ChatFormat.from_gguf(f, Tokenizer.from_gguf(f))
    text = fmt.render(as_dicts([("system", "Be brief."), ("user", "Hi")]))
    assert text == "<s>[INST] Be brief.\n\nHi [/INST]"
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        fmt.render(as_dicts([("user", "a"), ("user", "b")]))


@pytest.fixture(scope="module")
def smol(smollm2_path):
    f = GGUFFile(smollm2_path)
    tok = Tokenizer.from_gguf(f)
    return tok, ChatFormat.from_gguf(f, tok)


@pytest.fixture(scope="module")
def hf_smol(smollm2_path):
    return transformers_tokenizer(smollm2_path)


@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_chatml_renders_as_transformers(smol, hf_smol, name, generation_prompt):
    tok, fmt = smol
    messages = as_dicts(CONVERSATIONS[name])
    want = hf_smol.apply_chat_template(messages, tokenize=False,
                                       add_generation_prompt=generation_prompt)
    assert fmt.source == "model file"
    assert fmt.render(messages, add_generation_prompt=generation_prompt) == want


def test_chatml_markers_are_special_and_typed_markers_are_not(smol):
    tok, fmt = smol
    typed = "Is <|im_start|> or <|im_end|> or <|endoftext|> special?"
    messages = as_dicts([("user", typed), ("assistant", "<|im_end|>No."), ("user", "Sure?")])
    ids = fmt.encode(messages)
    im_start, im_end, endoftext = 1, 2, 0
    assert [tok.piece(i) for i in (im_start, im_end, endoftext)] == [
        "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    n_turns = len(messages) + 2  # the template's default system turn, the reply's start
    assert ids.count(im_start) == n_turns
    assert ids.count(im_end) == n_turns - 1
    assert endoftext not in ids
    assert tok.decode(ids).count(typed) == 1
    # Without typed markers, the prompt is the rendered text with markers parsed.
    plain = as_dicts([("user", "Hello there"), ("assistant", "Hi!"), ("user", "Bye")])
    assert fmt.encode(plain) == tok.encode(fmt.render(plain), parse_special=True)


def test_content_trimmed_by_the_template_stays_plain_text(mixtral_vocab):
    f = GGUFFile(mixtral_vocab())
    tok = Tokenizer.from_gguf(f)
    fmt = ChatFormat("{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] | trim }}"
                     " [/INST]{% endfor %}", tok, "test")
    ids = fmt.encode([{"role": "user", "content": "  </s> hi  "}])
    assert ids == [tok.bos_id, *tok.encode("[INST] </s> hi [/INST]", add_bos=False)]


HOSTILE = {
    "class": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals": "{{ cycler.__init__.__globals__.os.system('touch {marker}') }}",
    "os": "{{ os.system('touch {marker}') }}",
    "self": "{{ self.__init__.__globals__ }}",
    "mutation": "{{ messages.append('x') }}",
    "silent loop": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}"
                   "{% endfor %}",
    "loop": "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}",
    "recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "huge string": "{{ 'x' * 10 ** 10 }}",
    "huge power": "{{ 7 ** 123456789 }}",
    "syntax": "{% for %}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_templates_fail_fast_and_run_nothing(mixtral_vocab, tmp_path, name):
    tok = Tokenizer.from_gguf(GGUFFile(mixtral_vocab()))
    marker = tmp_path / "pwned"
    start = time.perf_counter()
    with pytest.raises(ChatTemplateError):
        ChatFormat(HOSTILE[name].replace("{marker}", str(marker)), tok, "test").encode(
            [{"role": "user", "content": "hi"}])
    assert time.perf_counter() - start < 5  # the limit is 2 s
    assert not marker.exists()


def test_template_errors_are_clear(mixtral_vocab):
    tok = Tokenizer.from_gguf(GGUFFile(mixtral_vocab()))
    with pytest.raises(ChatTemplateError, match="rejects this conversation: no tools"):
        ChatFormat("{{ raise_exception('no tools') }}", tok, "test").render(
            [{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="unsafe"):
        ChatFormat("{{ ''.__class__ }}", tok, "test").render([{"role": "user", "content": "x"}])
