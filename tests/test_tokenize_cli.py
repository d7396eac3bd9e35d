"""`mixlocal tokenize`, run as a user runs it: the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizer_refs import mixtral_vocab  # noqa: F401  (fixture)

from mixlocal.chat import ChatFormat
from mixlocal.gguf_file import GGUFFile
from mixlocal.tokenizer import Tokenizer

SCRIPT = Path(sys.executable).parent / "mixlocal"
TEXT = "Hello  world\t[INST] </s> 日本 👩"


def mixlocal(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    if not SCRIPT.exists():
        pytest.skip(f"the console script is not installed at {SCRIPT} (pip install -e .)")
    return subprocess.run([str(SCRIPT), *args], input=stdin, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})


@pytest.fixture(scope="module")
def vocab(mixtral_vocab):
    path = mixtral_vocab()
    f = GGUFFile(path)
    return str(path), Tokenizer.from_gguf(f), f


def ids_of(out: str) -> list[int]:
    return [int(i) for i in out.split()]


def test_prints_the_ids_run_feeds_the_model(vocab):
    path, tok, _ = vocab
    r = mixlocal("tokenize", "-m", path, TEXT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and ids_of(r.stdout) == tok.encode(TEXT)
    assert ids_of(r.stdout)[0] == tok.bos_id


def test_reads_stdin_as_is(vocab):
    path, tok, _ = vocab
    r = mixlocal("tokenize", "-m", path, stdin=TEXT + "\n")
    assert r.returncode == 0, r.stderr
    assert ids_of(r.stdout) == tok.encode(TEXT + "\n")


def test_pieces_and_count(vocab):
    path, tok, _ = vocab
    r = mixlocal("tokenize", "-m", path, "--pieces", TEXT)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert [int(i) for i, _ in rows] == tok.encode(TEXT)
    assert [json.loads(p) for _, p in rows] == [tok.piece(i) for i in tok.encode(TEXT)]
    r = mixlocal("tokenize", "-m", path, "--count", TEXT)
    assert r.stdout == f"{len(tok.encode(TEXT))}\n"


def test_chat_turn_through_the_template(vocab):
    path, tok, f = vocab
    r = mixlocal("tokenize", "-m", path, "--chat", "-v", TEXT)
    assert r.returncode == 0, r.stderr
    assert ids_of(r.stdout) == ChatFormat.from_gguf(f, tok).encode(
        [{"role": "user", "content": TEXT}])
    assert "chat template: fallback (mistral)" in r.stderr


def test_smollm2_chat_markers(smollm2_path):
    r = mixlocal("tokenize", "-m", str(smollm2_path), "--chat", "<|im_start|>")
    assert r.returncode == 0, r.stderr
    assert ids_of(r.stdout).count(1) == 3  # system, user, assistant: not the typed one


@pytest.mark.parametrize("args, code, message", [
    (("-m", "/nonexistent.gguf", "x"), 1, "/nonexistent.gguf"),
    (("--pieces", "--count", "x"), 2, "do not go together"),
])
def test_errors_are_one_line(vocab, args, code, message):
    if "-m" not in args:
        args = ("-m", vocab[0], *args)
    r = mixlocal("tokenize", *args)
    assert r.returncode == code
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr
