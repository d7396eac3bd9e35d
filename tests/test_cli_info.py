"""`mixlocal info`, checked against numbers recomputed with gguf-py's own reader."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from cli_util import assert_one_line_error, home, mixlocal  # noqa: F401
from gguf import GGUFReader

from mixlocal.cli.info import human_bytes
from mixlocal.synthetic import PRESETS, write_model


def row(out: str, label: str) -> str:
    found = re.search(rf"^\s*{re.escape(label)}\s+(.+?)\s*$", out, re.M)
    assert found, (label, out)
    return found.group(1)


def expected_sizes(path, k: int):
    """(parameters, active parameters, bytes read per token), from gguf-py."""
    r = GGUFReader(path)
    field = r.fields["llama.expert_count"] if "llama.expert_count" in r.fields else None
    n_expert = int(field.parts[-1][0]) if field else 0
    params = active = read = 0.0
    names = {t.name for t in r.tensors}
    for t in r.tensors:
        n, share = float(t.n_elements), 1.0
        if n_expert and re.search(r"ffn_(gate|up|down)(_exps|\.\d+)\.", t.name):
            share = k / n_expert
        elif t.name == "token_embd.weight" and "output.weight" in names:
            share = 1 / int(t.shape[1])  # gguf-py's shape is (n_embd, n_vocab)
        params, active, read = params + n, active + n * share, read + t.n_bytes * share
    return params, active, read, Counter(t.tensor_type.name for t in r.tensors)


@pytest.mark.parametrize("experts, layout", [(None, "merged"), (3, "per_expert")])
def test_moe_info(tiny_model, home, experts, layout):
    path = tiny_model("kquant", "q4_k_m", layout)
    args = ["info", str(path), "-c", "128"] + (["--experts", str(experts)] if experts else [])
    done = mixlocal(*args, home=home)
    assert done.returncode == 0, done.stderr
    out, k = done.stdout, experts or 2
    params, active, read, types = expected_sizes(path, k)
    assert row(out, "architecture") == "llama (mixture of experts)"
    assert row(out, "parameters") == f"{params / 1e6:.2f}M ({active / 1e6:.2f}M active per token)"
    assert row(out, "experts") == f"8, {k} used per token"
    assert row(out, "context") == "256 tokens trained; 128 for a run (-c)"
    assert row(out, "tokenizer") == "llama, 400 tokens"
    assert row(out, "chat template") == "yes"
    assert row(out, "file size") == human_bytes(path.stat().st_size)
    assert row(out, "weights read per token") == human_bytes(read)
    # K and V, 2 layers, 128 positions, 2 KV heads of 64, float32
    assert row(out, "KV cache at 128 tokens") == human_bytes(2 * 2 * 128 * 2 * 64 * 4)
    assert set(types) == {"Q4_K", "Q6_K", "Q8_0", "Q5_K", "F32"}
    shares = 0.0
    for name, count in types.items():
        cells = row(out, name).split()
        assert int(cells[0]) == count
        shares += float(cells[-1].rstrip("%"))
    assert shares == pytest.approx(100, abs=0.3)


def test_dense_info_of_smollm2(smollm2_path, home):
    done = mixlocal("info", str(smollm2_path), home=home)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert row(out, "experts") == "none (dense)"
    assert row(out, "tokenizer") == "gpt2 (smollm), 49152 tokens"
    assert row(out, "chat template") == "yes"
    assert row(out, "context") == "8192 tokens trained; 4096 for a run (-c)"
    assert row(out, "parameters").startswith("134.52M")
    # tied output: the whole embedding is read as the output projection
    assert row(out, "weights read per token") == human_bytes(expected_sizes(smollm2_path, 0)[2])
    assert "\x1b[" not in out  # no colour when stdout is not a terminal


@pytest.mark.parametrize("content, words", [
    (None, "no such model file"),
    (b"just some text\n" * 4, "not a GGUF file"),
    (b"GGUF\x03\x00\x00\x00" + b"\xff" * 40, "corrupt GGUF header"),
])
def test_info_errors(tmp_path, home, content, words):
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    assert_one_line_error(mixlocal("info", str(path), home=home), 1, words)


def test_a_file_without_template_names_the_fallback_format(tmp_path, home):
    path = write_model(tmp_path / "plain.gguf", PRESETS["tiny-dense"], "f32", chat_template=None)
    done = mixlocal("info", str(path), home=home)
    assert done.returncode == 0, done.stderr
    assert row(done.stdout, "chat template") == "no (the Mistral [INST] format is used)"
