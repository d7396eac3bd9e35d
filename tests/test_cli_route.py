"""`mixlocal route` and `mixlocal perplexity` end to end.

The routed model (tests/routed_model.py) sends every token id to experts known in advance,
so the trace in --json is checked against those; the printed summaries are checked
against numbers recomputed here, in plain Python, from the --json trace.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
from routed_model import CONFIG, expected_weights, first_choice, second_choice, write_routed_model

from mixlocal.cli.app import main
from mixlocal.model import Model
from mixlocal.perplexity import perplexity
from mixlocal.tokenizer import Tokenizer

TEXT = "Hello world, the model is a mixture of experts. The capital of France is Paris."
OTHER = "the sun and the sea, the tree and the city; the water is hot and the air is low."


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    return write_routed_model(tmp_path_factory.mktemp("route") / "routed.gguf")


def mixlocal(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def table_after(out: str, heading: str) -> list[list[str]]:
    """The body rows of the first table printed after the line starting with heading."""
    lines = out[out.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    rows = []
    for line in lines[start + 1:]:
        if not line.startswith("│"):
            break
        rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


def summary_by_hand(experts: list[list[list[int]]], n_expert: int) -> dict:
    """Shares and repetition rates of a [layer][token] -> experts trace, in plain Python."""
    share, rep_first, rep_shared = [], [], []
    for rows in experts:
        choices = [e for row in rows for e in row]
        share.append([choices.count(e) / len(choices) for e in range(n_expert)])
        pairs = list(zip(rows, rows[1:]))
        rep_first.append(sum(a[0] == b[0] for a, b in pairs) / len(pairs))
        rep_shared.append(sum(bool(set(a) & set(b)) for a, b in pairs) / len(pairs))
    return {"share": share, "repeat_first": rep_first, "repeat_shared": rep_shared}


def test_route_json_trace_and_printed_summaries(routed, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text(OTHER)
    code, out, err = mixlocal(capsys, "route", TEXT, "-m", routed, "--file", other,
                              "--layer", "0,2", "--json", tmp_path / "trace.json")
    assert code == 0, err
    doc = json.loads((tmp_path / "trace.json").read_text())
    tokenizer = Tokenizer.from_gguf(Model.load(routed).file)
    assert [t["name"] for t in doc["texts"]] == ["text", "other.txt"]
    assert doc["texts"][0]["tokens"] == tokenizer.encode(TEXT)
    w1, w2 = expected_weights()
    n_layer = CONFIG.n_layer
    by_hand = []
    for text in doc["texts"]:
        ids = np.array(text["tokens"])
        want = [np.stack([first_choice(l, ids), second_choice(l, ids)], -1).tolist()
                for l in range(n_layer)]
        assert text["experts"] == want
        np.testing.assert_allclose(np.array(text["weights"])[..., 0], w1, rtol=1e-5)
        np.testing.assert_allclose(np.array(text["weights"])[..., 1], w2, rtol=1e-3)
        by_hand.append(summary_by_hand(text["experts"], CONFIG.n_expert))
        for field, value in by_hand[-1].items():
            np.testing.assert_allclose(text["summary"][field], value, rtol=0, atol=1e-12)

    # The printed tables show the same numbers (to their one decimal).
    rows = table_after(out, "Consecutive tokens routed")
    assert [r[0] for r in rows] == ["0", "1", "2"]
    for layer, row in enumerate(rows):
        want = [f"{100 * s[f][layer]:.1f}" for s in by_hand
                for f in ("repeat_first", "repeat_shared")]
        assert row[1:] == want
    for layer in (0, 2):
        rows = table_after(out, f"Layer {layer}: share of routing choices")
        for e, row in enumerate(rows):
            assert [row[1], row[3]] == [f"{100 * s['share'][layer][e]:.1f}" for s in by_hand]
    assert "random router: first 12.5%, 1st or 2nd 46.4%" in " ".join(out.split())

    # Jensen-Shannon divergence of the two share distributions, per layer and mean.
    def h(p):
        return -sum(x * math.log2(x) for x in p if x > 0)
    jsd = []
    for layer in range(n_layer):
        p, q = (s["share"][layer] for s in by_hand)
        jsd.append(h([(a + b) / 2 for a, b in zip(p, q)]) - (h(p) + h(q)) / 2)
    assert doc["divergence"]["per_layer"] == pytest.approx(jsd, abs=1e-12)
    assert [r[-1] for r in table_after(out, "Expert shares per layer")] == [f"{x:.4f}" for x in jsd]
    assert f"mean over layers: {np.mean(jsd):.4f} bits" in " ".join(out.split())


def test_route_plain_text_marks_first_choice(routed, tmp_path, capsys):
    code, out, err = mixlocal(capsys, "route", "the water", "-m", routed, "--layer", "1",
                              "--json", tmp_path / "t.json")
    assert code == 0, err
    text = json.loads((tmp_path / "t.json").read_text())["texts"][0]
    sub = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
    marked = "".join(p + str(first_choice(1, t)).translate(sub)
                     for p, t in zip(text["pieces"], text["tokens"]))
    assert marked in out


def test_route_generate_routes_continuation(routed, tmp_path, capsys):
    code, _, err = mixlocal(capsys, "route", "the sea", "-m", routed, "--generate", "5",
                            "--experts", "1", "--json", tmp_path / "g.json")
    assert code == 0, err
    doc = json.loads((tmp_path / "g.json").read_text())
    text = doc["texts"][0]
    tokenizer = Tokenizer.from_gguf(Model.load(routed).file)
    n_prompt = len(tokenizer.encode("the sea"))
    assert n_prompt < len(text["tokens"]) <= n_prompt + 5
    assert doc["k"] == 1
    assert text["experts"] == [[[int(first_choice(l, t))] for t in text["tokens"]]
                               for l in range(CONFIG.n_layer)]


def test_route_reads_stdin(routed, tmp_path):
    run = subprocess.run([sys.executable, "-c", "from mixlocal.cli.app import main; main()",
                          "route", "-m", str(routed), "--json", str(tmp_path / "s.json")],
                         input="the tree", capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "s.json").read_text())["texts"][0]["name"] == "stdin"


@pytest.mark.parametrize("args, message", [
    (["route", ""], "text: the text is empty"),
    (["route", "hello", "--layer", "3"], "--layer 3 is out of range: the model has layers 0..2"),
    (["route", "hello", "--layer", "0,x"], "--layer: 'x' is not a layer number"),
    (["route", "hello", "--experts", "9"], "--experts 9 is more than the model's 8"),
    (["route", "the sun", "--generate", "260"],
     "text: 265 tokens (the text and --generate) do not fit the model's context of 256"),
])
def test_route_bad_input(routed, capsys, args, message):
    code, out, err = mixlocal(capsys, *args, "-m", routed)
    assert code == 2 and out == ""
    assert err.strip() == f"mixlocal: error: {message}"


def test_route_dense_model(tiny_model, capsys):
    code, _, err = mixlocal(capsys, "route", "hello", "-m", tiny_model("dense"))
    assert code == 2
    assert err.strip().endswith("is a dense model: it has no router, so there is no routing "
                                "to show")


def test_route_png(routed, tmp_path, capsys):
    png = tmp_path / "r.png"
    code, _, err = mixlocal(capsys, "route", "hello world", "-m", routed, "--png", png)
    if importlib.util.find_spec("matplotlib") is None:
        assert code == 2
        assert err.strip() == "mixlocal: error: --png needs matplotlib: pip install 'mixlocal[plot]'"
    else:
        assert code == 0, err
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_perplexity_command_equals_api(routed, tmp_path, capsys):
    words = " ".join(np.random.default_rng(0).choice(OTHER.replace(",", "").split(), 60))
    path = tmp_path / "words.txt"
    path.write_text(words)
    code, out, err = mixlocal(capsys, "perplexity", path, "-m", routed, "--ctx", "64",
                              "--experts", "1")
    assert code == 0, err
    model = Model.load(routed)
    tokenizer = Tokenizer.from_gguf(model.file)
    final = list(perplexity(model, tokenizer.encode(words), 64, bos=tokenizer.bos_id,
                            n_expert_used=1))[-1]
    assert out == f"Final estimate: PPL = {final.ppl:.4f} +/- {final.stderr:.5f}\n"
    assert f"[{final.n_windows}/{final.n_windows}] PPL {final.ppl:.4f}" in err


@pytest.mark.parametrize("text, args, message", [
    ("", [], "the file is empty"),
    ("the sun", [], "tokens, fewer than one window of 512"),
    ("the sun " * 100, ["--experts", "9"], "--experts 9 is more than the model's 8"),
])
def test_perplexity_bad_input(routed, tmp_path, capsys, text, args, message):
    path = tmp_path / "t.txt"
    path.write_text(text)
    code, out, err = mixlocal(capsys, "perplexity", path, "-m", routed, *args)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


ENGLISH = """\
The village sat at the edge of a wide valley, where the river slowed down and spread into \
shallow pools before it reached the sea. Every morning the farmers walked down to the fields \
with their tools on their shoulders, and the children followed them as far as the old stone \
bridge. In the spring the valley was green and full of flowers, and in the autumn the trees \
turned yellow and red. Most people in the village had lived there all their lives, and their \
parents and grandparents had lived there before them. They knew every path through the woods \
and every house along the road. When visitors came from the city, the villagers were polite \
but curious, and they asked many questions about the world outside. The school had only one \
classroom, and the teacher taught children of every age at the same time. She believed that \
the older children learned best when they helped the younger ones, so she often asked them to \
read aloud and to explain the lessons in their own words. In the evenings, families gathered \
around the table to share a simple meal of bread, soup and vegetables from their gardens. \
After dinner the old men played cards in the small square, while the women talked about the \
weather, the harvest and the news from the nearby town. Life was quiet and slow, but nobody \
seemed to mind. The seasons came and went, and the village changed very little from one year \
to the next.
"""


def test_smollm2_perplexity_is_plausible(smollm2_path, tmp_path, capsys):
    path = tmp_path / "english.txt"
    path.write_text(ENGLISH)
    code, out, err = mixlocal(capsys, "perplexity", path, "-m", smollm2_path, "--ctx", "128")
    assert code == 0, err
    ppl = float(out.split("PPL = ")[1].split()[0])
    print(f"SmolLM2-135M Q4_1, ctx 128, {err.splitlines()[0]}: PPL {ppl:.4f}")
    # A 135M model on plain English prose: far below chance (49152), far above 1.
    assert 3 < ppl < 40


def test_run_show_experts_marks_each_token(routed, tmp_path, capsys, monkeypatch):
    """The streamed answer's tokens carry the experts the built routers give them."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    code, _, err = mixlocal(capsys, "route", "the sun", "-m", routed, "--generate", "8",
                            "--json", tmp_path / "g.json")
    assert code == 0, err
    text = json.loads((tmp_path / "g.json").read_text())["texts"][0]
    n_prompt = len(text["tokens"]) - 8
    code, out, err = mixlocal(capsys, "run", "the sun", "-m", routed, "--raw", "-n", "8",
                              "--temp", "0", "--repeat-penalty", "1", "--show-experts",
                              "--layer", "2")
    assert code == 0, err
    sub = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")

    def marked(piece, token):
        # The mark goes before a line break; the terminal writer drops control characters.
        piece = "".join(ch for ch in piece if ch == "\n" or unicodedata.category(ch) != "Cc")
        body = piece.rstrip("\n")
        return body + str(first_choice(2, token)).translate(sub) + piece[len(body):]

    answer = list(zip(text["pieces"], text["tokens"]))[n_prompt:]
    # Every piece but the last (never fed back to the model) is marked.
    want = "".join(marked(p, t) for p, t in answer[:-1]) + answer[-1][0]
    assert out == want + ("" if want.endswith("\n") else "\n")
    assert "first-choice expert at layer 2" in err
