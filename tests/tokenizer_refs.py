"""Reference tokenizers for the tests.

Mixtral 8x7B's real tokenizer (tokenizer.model.v1 from mistral-common) written as GGUF
metadata (no tensors; pieces, scores and types as sentencepiece reads the .model file,
as llama.cpp's converter takes them), and transformers' reading of SmolLM2's GGUF.
"""

from __future__ import annotations

import functools
from pathlib import Path

import gguf
import pytest
import sentencepiece as spm

# The later chat template of Mixtral-8x7B-Instruct-v0.1 (a system role, spaces around
# [INST]); the original one is mixlocal.chat.MISTRAL_TEMPLATE.
MIXTRAL_TEMPLATE_V2 = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""


def reference_processor():
    """sentencepiece with Mixtral's tokenizer.model."""
    mistral_common = pytest.importorskip(
        "mistral_common", reason="the reference Mixtral tokenizer ships in mistral-common "
                                 "(pip install 'mixlocal[test]')")
    model = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    return spm.SentencePieceProcessor(model_file=str(model))


def write_vocab_gguf(path: Path, *, chat_template: str | None = None,
                     add_space_prefix: bool | None = None) -> Path:
    sp = reference_processor()
    n = sp.get_piece_size()

    def kind(i: int) -> int:
        for test, value in ((sp.is_byte, 6), (sp.is_control, 3), (sp.is_unknown, 2),
                            (sp.is_unused, 5)):
            if test(i):
                return value
        return 1

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i) for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types([kind(i) for i in range(n)])
    w.add_unk_token_id(sp.unk_id())
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def mixtral_vocab(tmp_path_factory):
    """make(chat_template=None, add_space_prefix=None) -> a GGUF holding only Mixtral's
    tokenizer, written once per set of arguments."""
    root = tmp_path_factory.mktemp("mixtral-vocab")
    written: dict[tuple, Path] = {}

    def make(chat_template: str | None = None, add_space_prefix: bool | None = None):
        key = (chat_template, add_space_prefix)
        if key not in written:
            written[key] = write_vocab_gguf(root / f"vocab{len(written)}.gguf",
                                            chat_template=chat_template,
                                            add_space_prefix=add_space_prefix)
        return written[key]

    return make


@functools.cache
def transformers_tokenizer(gguf_path: Path):
    """transformers' own tokenizer for a GGUF file (an independent BPE and renderer)."""
    transformers = pytest.importorskip("transformers", reason="the reference is "
                                       "transformers' GGUF tokenizer (mixlocal[test])")
    return transformers.AutoTokenizer.from_pretrained(gguf_path.parent,
                                                      gguf_file=gguf_path.name)
