"""`mixlocal chat` under a pseudo-terminal, as a person types it."""

from __future__ import annotations

import re

import pexpect
import pytest
from cli_util import MIXLOCAL, cli_env, home  # noqa: F401

from mixlocal.chat import ChatFormat
from mixlocal.gguf_file import GGUFFile
from mixlocal.tokenizer import Tokenizer

PROMPT = ">>> "
STATS = re.compile(r"prompt: (\d+) tokens, (\d+) processed \((\d+) reused")


def spawn(home, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(MIXLOCAL, ["chat", *args], env=cli_env(home, TERM="dumb"),
                          encoding="utf-8", timeout=180, dimensions=(40, 200))
    child.expect(PROMPT)
    return child


def say(child: pexpect.spawn, line: str) -> str:
    """Send a line; what came back before the next prompt."""
    child.sendline(line)
    child.expect(PROMPT)
    return child.before


def stats(child: pexpect.spawn) -> tuple[int, int, int]:
    found = STATS.search(say(child, "/stats"))
    assert found, child.before
    return tuple(map(int, found.groups()))


def prompt_tokens(path, messages) -> int:
    f = GGUFFile(path)
    tok = Tokenizer.from_gguf(f)
    return len(ChatFormat.from_gguf(f, tok).encode(messages))


@pytest.fixture(scope="module")
def moe(tiny_model):
    return tiny_model("moe", "q8_0")


def test_multiline_turns_reuse_the_cache_and_bye_exits(moe, home):
    child = spawn(home, "-m", str(moe), "--temp", "0", "-n", "6")
    child.sendline('"""first line')
    child.expect(r"\.\.\. ")
    child.sendline('second line"""')
    child.expect(PROMPT)
    total, processed, reused = stats(child)
    first = prompt_tokens(moe, [{"role": "user", "content": "first line\nsecond line"}])
    assert (total, processed, reused) == (first, first, 0)

    say(child, "the capital")
    total, processed, reused = stats(child)
    assert reused >= first and processed == total - reused

    assert "temperature = 0.2" in say(child, "/set temp 0.2")
    assert "error: /set: unknown parameter 'tmp'" in say(child, "/set tmp 1")
    assert "unknown command /nope" in say(child, "/nope")
    assert "Cleared" in say(child, "/clear")
    say(child, "Hello")
    assert stats(child)[0] == prompt_tokens(moe, [{"role": "user", "content": "Hello"}])
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(moe, home):
    child = spawn(home, "-m", str(moe), "--seed", "5", "-n", "-1", "-c", "4096")
    child.sendline("Hello world")
    child.expect("Hello world\r\n")
    child.expect(r"\S")  # the answer has begun
    child.sendintr()
    child.expect(r"\(stopped\)")
    child.expect(PROMPT)
    total, processed, _ = stats(child)
    assert total == processed  # the first turn
    assert "max_tokens = 4" in say(child, "/set max_tokens 4")
    say(child, "the capital")
    total2, processed2, reused2 = stats(child)
    assert reused2 >= total  # the interrupted turn stayed in the conversation and cache
    child.sendeof()  # Ctrl-D
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_smollm2_chat_answers_and_keeps_the_conversation(smollm2_path, home):
    child = spawn(home, "-m", str(smollm2_path), "--temp", "0", "-n", "24")
    assert "Paris" in say(child, "What is the capital of France?")
    first_total, _, _ = stats(child)
    say(child, "Say that again in one word.")
    total, processed, reused = stats(child)
    assert reused > first_total and processed < 20
    child.sendline("/bye")
    child.expect(pexpect.EOF)
