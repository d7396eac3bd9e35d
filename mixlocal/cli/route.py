"""`mixlocal route`: which experts the router picks for a text, in the Mixtral paper's views.

Text coloured by first-choice expert (the paper's Figure 8), the share of each expert per
layer (Figure 7) with the Jensen-Shannon divergence between several texts, and the
repetition rates of consecutive tokens (its Table 5). Definitions: mixlocal/routing.py.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

from ..routing import (RoutedText, RouteSummary, RouteTrace, js_divergence, random_baselines,
                       summarize, to_json)
from .app import app
from .common import (ExpertsOption, ModelOption, ThreadsOption, UsageError, VerboseOption,
                     check_experts, err_console, load_model, out_console, plain_output, status)

# Tableau's 10 colours, distinct side by side, black text reads on each; a terminal
# of 16 colours would merge some of them, so it gets its 8 hues instead.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
           "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
ANSI_PALETTE = ("red", "green", "yellow", "blue", "magenta", "cyan", "white", "bright_black")
_DARK = {"red", "blue", "magenta", "bright_black"}  # white text on these
_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_BLOCKS = " ▁▂▃▄▅▆▇█"
BAR_WIDTH = 24



def expert_colour(expert: int) -> str:
    few = out_console().color_system in ("standard", "windows")
    palette = ANSI_PALETTE if few else PALETTE
    return palette[expert % len(palette)]


def expert_style(expert: int) -> Style:
    colour = expert_colour(expert)
    return Style(color="white" if colour in _DARK else "black", bgcolor=colour)


def expert_piece(piece: str, expert: int, plain: bool) -> Text:
    """One token of text marked with its expert: a background colour, or in plain text a
    subscript expert number (before any line break, so the mark stays with the token)."""
    body = piece.rstrip("\n")
    breaks = piece[len(body):]
    if plain:
        return Text(body + str(expert).translate(_SUBSCRIPT) + breaks)
    # A line break gets a visible mark: indentation and new lines are routed too.
    return Text.assemble((body + ("↵" if breaks else ""), expert_style(expert)), breaks)


def legend(n_expert: int, plain: bool) -> Text:
    if plain:
        return Text("(each token is followed by the number of its first-choice expert)")
    parts = [Text("experts: ")]
    for e in range(n_expert):
        parts += [expert_piece(f" {e} ", e, plain), Text(" ")]
    return Text.assemble(*parts)


def require_router(name: str, config) -> None:
    if not config.is_moe:
        raise UsageError(f"{name} is a dense model: it has no router, so there is no "
                         f"routing to show")


def check_layer(layer: int, n_layer: int) -> int:
    if not 0 <= layer < n_layer:
        raise UsageError(f"--layer {layer} is out of range: the model has layers "
                         f"0..{n_layer - 1}")
    return layer


def parse_layers(spec: str | None, n_layer: int) -> list[int]:
    """'0,15,31' -> [0, 15, 31]; by default the first, middle and last layers."""
    if spec is None:
        return sorted({0, (n_layer - 1) // 2, n_layer - 1})
    layers = []
    for part in spec.split(","):
        if not part.strip().isdigit():
            raise UsageError(f"--layer: {part.strip()!r} is not a layer number")
        layers.append(check_layer(int(part), n_layer))
    return layers


class ExpertStream:
    """`run/chat --show-experts`: the streamed answer marked with each token's
    first-choice expert at one layer. It is also the model's route observer.

    A token is routed when it is fed back to the model, one step after its text is
    shown, so each piece waits for the next routing decision at the layer; the answer's
    last piece, never fed back, is written unmarked.
    """

    def __init__(self, name: str, config, layer: int | None):
        require_router(name, config)
        self.layer = check_layer((config.n_layer - 1) // 2 if layer is None else layer,
                                 config.n_layer)
        self.plain = plain_output()
        self._expert = 0
        self._pending = ""
        err = err_console()
        err.print(f"Tokens marked by their first-choice expert at layer {self.layer}")
        err.print(legend(config.n_expert, self.plain))

    def on_route(self, layer: int, positions, experts, weights) -> None:
        if layer == self.layer:
            self._expert = int(experts[-1, 0])

    def write(self, piece: str) -> None:
        if self._pending:
            out_console().print(expert_piece(self._pending, self._expert, self.plain),
                                end="", soft_wrap=True)
        self._pending = piece

    def close(self) -> None:
        sys.stdout.write(self._pending)
        self._pending = ""


# --- views ---------------------------------------------------------------------------

def coloured_text(text: RoutedText, layer: int, plain: bool) -> Text:
    first = text.routing.experts[text.routing.layer_row(layer), :, 0]
    return Text.assemble(*(expert_piece(p, int(e), plain) for p, e in zip(text.pieces, first)))


def _bar(fraction: float, width: int) -> str:
    eighths = round(max(fraction, 0.0) * width * 8)
    return "█" * (eighths // 8) + ("▏▎▍▌▋▊▉"[eighths % 8 - 1] if eighths % 8 else "")


def share_table(texts: list[RoutedText], summaries: list[RouteSummary], layer: int) -> Table:
    """Figure 7 for one layer: each expert's share of the choices, per text."""
    routing = texts[0].routing
    row = routing.layer_row(layer)
    n = routing.n_expert
    table = Table()
    table.add_column("expert", justify="right")
    top = max(float(s.share[row].max()) for s in summaries)
    width = max(8, BAR_WIDTH // len(texts))
    for text in texts:
        table.add_column("%", justify="right")
        table.add_column(text.name, no_wrap=True, min_width=width)
    for e in range(n):
        cells = []
        for s in summaries:
            share = float(s.share[row, e])
            cells += [f"{100 * share:.1f}", Text(_bar(share / top, width),
                                                 Style(color=expert_colour(e)))]
        table.add_row(str(e), *cells)
    return table


def overview_table(texts, summaries, divergence: np.ndarray | None) -> Table:
    """Every layer at a glance: one block per expert, its height the expert's share."""
    routing = texts[0].routing
    full = 2.0 / routing.n_expert  # twice the uniform share fills a block
    table = Table()
    table.add_column("layer", justify="right")
    for text in texts:
        table.add_column(text.name, no_wrap=True)
    if divergence is not None:
        table.add_column("JS div. (bits)", justify="right")
    for row, layer in enumerate(routing.layers):
        cells = []
        for s in summaries:
            cells.append(Text.assemble(*(
                (_BLOCKS[min(8, round(8 * share / full))], Style(color=expert_colour(e)))
                for e, share in enumerate(s.share[row]))))
        if divergence is not None:
            cells.append(f"{divergence[row]:.4f}")
        table.add_row(str(layer), *cells)
    return table


def _shared_name(k: int) -> str:
    return "1st or 2nd" if k == 2 else f"any of top {k}"


def repetition_table(texts, summaries) -> Table:
    """The paper's Table 5: consecutive tokens sent to the same expert, per layer."""
    routing = texts[0].routing
    shared_name = _shared_name(routing.k)
    table = Table()
    table.add_column("layer", justify="right")
    for text in texts:
        table.add_column(f"{text.name}\nfirst", justify="right")
        table.add_column(f"{text.name}\n{shared_name}", justify="right")
    for row, layer in enumerate(routing.layers):
        cells = []
        for s in summaries:
            cells += [f"{100 * s.repeat_first[row]:.1f}", f"{100 * s.repeat_shared[row]:.1f}"]
        table.add_row(str(layer), *cells)
    return table


def render(console: Console, texts: list[RoutedText], layers: list[int], plain: bool) -> None:
    summaries = [summarize(t.routing) for t in texts]
    n_expert = texts[0].routing.n_expert
    for text in texts:
        for layer in layers:
            console.rule(f"{text.name}: first-choice expert at layer {layer}", align="left")
            console.print(legend(n_expert, plain))
            console.print(coloured_text(text, layer, plain))
    divergence = (js_divergence(np.stack([s.share for s in summaries]))
                  if len(texts) > 1 else None)
    heading = Style(bold=True)
    console.print()
    console.print("Expert shares per layer (height: share; full at twice uniform)", style=heading)
    console.print(overview_table(texts, summaries, divergence))
    for layer in layers:
        console.print(f"Layer {layer}: share of routing choices per expert "
                      f"(uniform {100 / n_expert:.1f}%)", style=heading)
        console.print(share_table(texts, summaries, layer))
    if divergence is not None:
        console.print(f"Jensen-Shannon divergence of the expert shares between the texts, "
                      f"mean over layers: {divergence.mean():.4f} bits (0: the same split)")
    k = texts[0].routing.k
    first_base, shared_base = random_baselines(n_expert, k)
    console.print("Consecutive tokens routed to the same expert, %", style=heading)
    console.print(repetition_table(texts, summaries))
    console.print(f"random router: first {100 * first_base:.1f}%, {_shared_name(k)} "
                  f"{100 * shared_base:.1f}% ({_shared_name(k)}: the two tokens share a "
                  f"chosen expert)")


def write_png(path: Path, doc: dict) -> None:
    """The share heat map of each text and the repetition rates per layer, as an image."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    texts, layers = doc["texts"], doc["layers"]
    fig, axes = plt.subplots(1, len(texts) + 1, figsize=(4 * (len(texts) + 1), 5),
                             squeeze=False, layout="constrained")
    vmax = max(np.max(t["summary"]["share"]) for t in texts)
    for ax, text in zip(axes[0], texts):
        image = ax.imshow(np.array(text["summary"]["share"]), aspect="auto", cmap="viridis",
                          vmin=0, vmax=vmax, origin="lower",
                          extent=(-0.5, doc["n_expert"] - 0.5, layers[0] - 0.5, layers[-1] + 0.5))
        ax.set(title=f"{text['name']}: expert share", xlabel="expert", ylabel="layer")
    fig.colorbar(image, ax=axes[0, :-1], label="share of routing choices")
    ax = axes[0, -1]
    for i, text in enumerate(texts):
        colour = f"C{i}"
        ax.plot(layers, text["summary"]["repeat_first"], color=colour, label=f"{text['name']} first")
        ax.plot(layers, text["summary"]["repeat_shared"], color=colour, ls="--",
                label=f"{text['name']} shared")
    for value in doc["baseline"].values():
        ax.axhline(value, color="grey", lw=0.8, ls=":")
    ax.set(title="consecutive tokens, same expert\n(dotted: random router)", xlabel="layer",
           ylabel="rate", ylim=(0, 1))
    for a in axes[0]:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.yaxis.set_major_locator(MaxNLocator(integer=a is not ax))
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- running the model ---------------------------------------------------------------

def display_pieces(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds; tokens that add none (BOS, a character's leading bytes)
    show their vocabulary entry."""
    decoder = tokenizer.decoder()
    return [decoder.feed(i) or tokenizer.piece(i) for i in ids]


def trace_text(model, tokenizer, name: str, text: str, *, n_generate: int,
               n_expert_used: int | None) -> RoutedText:
    """Run the text (and greedily continue it by n_generate tokens), recording the routing."""
    from ..generate import generate
    from ..sampling import GREEDY

    ids = tokenizer.encode(text)
    if not (ids[1:] if ids[:1] == [tokenizer.bos_id] else ids):
        raise UsageError(f"{name}: the text is empty")
    if len(ids) < 2:
        raise UsageError(f"{name}: the text is one token; routing views need at least two")
    needed, n_ctx = len(ids) + n_generate, model.config.n_ctx_train
    if needed > n_ctx:
        raise UsageError(f"{name}: {needed} tokens (the text and --generate) do not fit the "
                         f"model's context of {n_ctx}")
    trace = RouteTrace(model.config.n_expert)
    cache = model.new_cache(len(ids) + n_generate)
    run = dict(n_expert_used=n_expert_used, observer=trace)
    if n_generate:
        new = list(generate(model, ids, cache, GREEDY, max_tokens=n_generate,
                            stop_ids=tokenizer.stop_ids, **run))
        if new:
            model.forward(new[-1:], cache, **run)  # route the last token as well
        ids += new
    else:
        model.forward(ids, cache, **run)
    return RoutedText(name, ids, display_pieces(tokenizer, ids), trace.routing())


def read_inputs(text: str | None, files: list[Path]) -> list[tuple[str, str]]:
    inputs = [("text", text)] if text is not None else []
    inputs += [(f.name, f.read_text(encoding="utf-8")) for f in files]
    if not inputs:
        if sys.stdin.isatty():
            raise UsageError("give a TEXT, one or more --file, or text on stdin")
        inputs = [("stdin", sys.stdin.read())]
    return inputs


@app.command()
def route(
    text: Annotated[Optional[str], typer.Argument(
        show_default=False, help="Text to route (or use --file, or stdin).")] = None,
    model: ModelOption = None,
    files: Annotated[list[Path], typer.Option(
        "--file", "-f", show_default=False, dir_okay=False,
        help="A text file (repeat to compare several side by side).")] = [],  # noqa: B006
    layer: Annotated[Optional[str], typer.Option(
        "--layer", "-l", show_default=False,
        help="Layers to colour the text by, e.g. 0,15,31 (default: first, middle, last).")
    ] = None,
    n_generate: Annotated[int, typer.Option(
        "--generate", "-g", min=0, help="Continue the text by N greedy tokens, routed too.")
    ] = 0,
    experts: ExpertsOption = None,
    json_path: Annotated[Optional[Path], typer.Option(
        "--json", dir_okay=False, show_default=False,
        help="Write the whole trace and the summaries to this JSON file.")] = None,
    png_path: Annotated[Optional[Path], typer.Option(
        "--png", dir_okay=False, show_default=False,
        help="Draw the share heat map and repetition rates (needs mixlocal[plot]).")] = None,
    threads: ThreadsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Show which experts the router picks for each token of a text."""
    if png_path is not None and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--png needs matplotlib: pip install 'mixlocal[plot]'")
    inputs = read_inputs(text, files)
    path, m, tokenizer = load_model(model, threads)
    c = m.config
    require_router(path.name, c)
    check_experts(experts, c)
    layers = parse_layers(layer, c.n_layer)
    texts = []
    for name, body in inputs:
        with status(f"Routing {name}"):
            texts.append(trace_text(m, tokenizer, name, body, n_generate=n_generate,
                                    n_expert_used=experts))
    doc = to_json(texts, model=path.name)
    if png_path is not None:
        write_png(png_path, doc)
    if json_path is not None:
        json_path.write_text(json.dumps(doc), encoding="utf-8")
    render(out_console(), texts, layers, plain_output())
