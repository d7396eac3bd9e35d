"""Write llama-architecture GGUF files with random weights, for tests and benchmarks.

Tensor data is streamed to the file one matrix (one expert) at a time, so a file with
Mixtral 8x7B's real layer shapes is written in bounded memory. The files carry a small
but valid SentencePiece vocabulary, so tiny models run end to end.

    python -m mixlocal.synthetic --preset mixtral-8x7b --layers 4 --quant q4_k_m out.gguf
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
from gguf import GGUFWriter
from gguf.constants import GGMLQuantizationType as QT, TokenType

from .chat import MISTRAL_TEMPLATE
from .config import ModelConfig
from .quant import block_size, row_bytes
from .quant.randblocks import random_blocks

# Roles are tensor names without the `blk.N.` prefix and the expert suffix.
FLOAT_ROLES = ("attn_norm", "ffn_norm", "output_norm", "ffn_gate_inp")

QuantMix = str | Mapping[str, QT] | Callable[[str, int], QT]


def _q4_k_m(role: str, layer: int) -> QT:
    # llama.cpp's Q4_K_M for an 8-expert model, with "more bits" in alternate layers.
    if role == "output" or (role == "ffn_down" and layer % 2 == 0):
        return QT.Q6_K
    return {"attn_k": QT.Q8_0, "attn_v": QT.Q8_0, "attn_output": QT.Q5_K}.get(role, QT.Q4_K)


def _q2_k(role: str, layer: int) -> QT:
    return {"output": QT.Q6_K, "attn_k": QT.Q4_K, "attn_v": QT.Q4_K,
            "attn_output": QT.Q3_K, "ffn_down": QT.Q3_K}.get(role, QT.Q2_K)


MIXES: dict[str, Callable[[str, int], QT]] = {
    "f32": lambda role, layer: QT.F32,
    "f16": lambda role, layer: QT.F16,
    "q8_0": lambda role, layer: QT.Q8_0,
    "q4_0": lambda role, layer: QT.Q4_0,
    "q4_k_m": _q4_k_m,
    "q2_k": _q2_k,
}

PRESETS: dict[str, ModelConfig] = {
    "mixtral-8x7b": ModelConfig(name="synthetic Mixtral 8x7B shapes"),
    "mistral-7b": ModelConfig(n_expert=0, n_expert_used=0, rope_base=1e6,
                              name="synthetic Mistral 7B shapes"),
    "tiny-moe": ModelConfig(n_vocab=512, n_embd=256, n_layer=2, n_ff=512, n_head=4,
                            n_head_kv=2, n_ctx_train=512, rope_dim=64, rope_base=1e4,
                            name="synthetic tiny MoE"),
    "tiny-dense": ModelConfig(n_vocab=512, n_embd=256, n_layer=2, n_ff=512, n_head=4,
                              n_head_kv=2, n_ctx_train=512, rope_dim=64, rope_base=1e4,
                              n_expert=0, n_expert_used=0, name="synthetic tiny dense"),
}


_WORDS = """
the of and to a in is it you that he was for on are with as I his they be at one have
this from or had by hot word but what some we can out other were all there when up use
your how said an each she which do their time if will way about many then them write
would like so these her long make thing see him two has look more day could go come did
number sound no most people my over know water than call first who may down side been
now find any new work part take get place made live where after back little only round
man year came show every good me give our under name very through just form sentence
great think say help low line differ turn cause much mean before move right boy old too
same tell does set three want air well also play small end put home read hand port large
spell add even land here must big high such follow act why ask men change went light kind
off need house picture try us again animal point mother world near build self earth
father head stand own page should country found answer school grow study still learn
plant cover food sun four between state keep eye never last let thought city tree cross
farm hard start might story saw far sea draw left late run while press close night real
life few north Paris France capital Hello hello model expert token mixture language
""".split()
_UNK, _BOS, _EOS = 0, 1, 2
_N_BYTE_TOKENS = 256


def llama_vocab(n_vocab: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A SentencePiece-style vocabulary of exactly n_vocab pieces: tokens, scores, types.

    Control tokens and 256 byte-fallback tokens come first, then single characters and
    "▁"-prefixed words with every prefix (so merging pairs can reach each word), with
    shorter pieces merging first; padded with unused tokens.
    """
    tokens = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL,
             TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(_N_BYTE_TOKENS)]
    types += [TokenType.BYTE] * _N_BYTE_TOKENS
    n_special = len(tokens)

    pieces = dict.fromkeys(["▁"] + [chr(c) for c in range(33, 127)])
    for word in _WORDS:
        for piece in ("▁" + word, word):
            pieces.update(dict.fromkeys(piece[:i] for i in range(2, len(piece) + 1)))
    ordered = sorted(pieces, key=len)
    if n_vocab < n_special + 1:
        raise ValueError(f"n_vocab {n_vocab} is too small for a llama vocabulary "
                         f"(at least {n_special + 1})")
    ordered = ordered[:n_vocab - n_special]
    tokens += ordered
    types += [TokenType.NORMAL] * len(ordered)
    # As in trained vocabularies, a piece's score is minus its merge rank.
    scores = [0.0] * n_special + [-float(i) for i in range(len(ordered))]
    n_pad = n_vocab - len(tokens)
    tokens += [f"<unused{i}>" for i in range(n_pad)]
    types += [TokenType.UNUSED] * n_pad
    scores += [-1e9] * n_pad
    return tokens, np.array(scores, np.float32), np.array(types, np.int32)


def resolve_mix(quant: QuantMix) -> Callable[[str, int], QT]:
    """A function (role, layer) -> type; norms and the router are F32 unless named."""
    if isinstance(quant, str):
        if quant not in MIXES:
            raise ValueError(f"unknown quant mix {quant!r} (known: {', '.join(MIXES)})")
        base = MIXES[quant]
    elif isinstance(quant, Mapping):
        table = dict(quant)
        default = table.get("default", QT.F32)
        base = lambda role, layer: table.get(role, default)  # noqa: E731
    else:
        base = quant

    def qtype(role: str, layer: int) -> QT:
        if role in FLOAT_ROLES and not (isinstance(quant, Mapping) and role in quant):
            return QT.F32
        return base(role, layer)
    return qtype


@dataclasses.dataclass(frozen=True)
class _Tensor:
    name: str
    role: str
    layer: int           # -1 outside the blocks
    shape: tuple[int, ...]  # numpy order; a merged expert stack has 3 dimensions
    qtype: QT

    @property
    def byte_shape(self) -> tuple[int, ...]:
        return (*self.shape[:-1], row_bytes(self.qtype, self.shape[-1]))


def _plan(c: ModelConfig, qtype: Callable[[str, int], QT], layout: str) -> list[_Tensor]:
    if layout not in ("merged", "per_expert"):
        raise ValueError(f"layout must be 'merged' or 'per_expert', not {layout!r}")
    kv = c.n_head_kv * c.head_dim
    plan = [("token_embd", "token_embd", -1, (c.n_vocab, c.n_embd))]
    for i in range(c.n_layer):
        blk = f"blk.{i}"
        plan += [(f"{blk}.attn_norm", "attn_norm", i, (c.n_embd,)),
                 (f"{blk}.attn_q", "attn_q", i, (c.n_embd, c.n_embd)),
                 (f"{blk}.attn_k", "attn_k", i, (kv, c.n_embd)),
                 (f"{blk}.attn_v", "attn_v", i, (kv, c.n_embd)),
                 (f"{blk}.attn_output", "attn_output", i, (c.n_embd, c.n_embd)),
                 (f"{blk}.ffn_norm", "ffn_norm", i, (c.n_embd,))]
        ffn = {"ffn_gate": (c.n_ff, c.n_embd), "ffn_up": (c.n_ff, c.n_embd),
               "ffn_down": (c.n_embd, c.n_ff)}
        if not c.is_moe:
            plan += [(f"{blk}.{role}", role, i, shape) for role, shape in ffn.items()]
            continue
        plan.append((f"{blk}.ffn_gate_inp", "ffn_gate_inp", i, (c.n_expert, c.n_embd)))
        if layout == "merged":
            plan += [(f"{blk}.{role}_exps", role, i, (c.n_expert, *shape))
                     for role, shape in ffn.items()]
        else:
            # Role-major, as the merged stacks are: the same seed gives the same weights.
            plan += [(f"{blk}.{role}.{e}", role, i, shape)
                     for role, shape in ffn.items() for e in range(c.n_expert)]
    plan.append(("output_norm", "output_norm", -1, (c.n_embd,)))
    if not c.tied_output:
        plan.append(("output", "output", -1, (c.n_vocab, c.n_embd)))

    tensors = []
    for name, role, layer, shape in plan:
        t = _Tensor(f"{name}.weight", role, layer, shape, qtype(role, layer))
        if shape[-1] % block_size(t.qtype):
            raise ValueError(f"{t.name}: rows of {shape[-1]} are not a whole number of "
                             f"{t.qtype.name} blocks ({block_size(t.qtype)})")
        tensors.append(t)
    return tensors


_ROWS_PER_CHUNK = 1024  # bounds the float temporaries of quantizing a big matrix


def _matrix_chunks(t: _Tensor, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The tensor's bytes, a few rows at a time."""
    if t.role in ("attn_norm", "ffn_norm", "output_norm"):
        # Around 1, as trained norms are, so the residual stream keeps its scale.
        yield (1.0 + 0.1 * rng.standard_normal(t.shape)).astype(np.float32).view(np.uint8)
        return
    # 1/sqrt(fan-in) keeps every projection's output near unit scale.
    std = 1.0 / np.sqrt(t.shape[-1])
    rows = t.shape[-2]
    for outer in np.ndindex(*t.shape[:-2]):
        for r in range(0, rows, _ROWS_PER_CHUNK):
            n = min(_ROWS_PER_CHUNK, rows - r)
            yield random_blocks(t.qtype, (n, t.shape[-1]), rng, std=std)


def write_model(path: str | os.PathLike, config: ModelConfig, quant: QuantMix = "f32",
                layout: str = "merged", seed: int = 0, *,
                chat_template: str | None = MISTRAL_TEMPLATE) -> Path:
    """Write a llama-architecture GGUF with random weights; returns the path.

    `quant` is a named mix (see MIXES), a {role: type} dict (key "default" for the
    rest), or a function (role, layer) -> type. Roles: token_embd, output, attn_q,
    attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down, and the float ones
    attn_norm, ffn_norm, output_norm, ffn_gate_inp (F32 unless named).
    The vocabulary has config.n_vocab pieces (see llama_vocab).
    """
    c, path = config, Path(path)
    tensors = _plan(c, resolve_mix(quant), layout)
    rng = np.random.default_rng(seed)

    w = GGUFWriter(path, "llama")
    w.add_name(c.name or "synthetic")
    w.add_context_length(c.n_ctx_train)
    w.add_embedding_length(c.n_embd)
    w.add_block_count(c.n_layer)
    w.add_feed_forward_length(c.n_ff)
    w.add_head_count(c.n_head)
    w.add_head_count_kv(c.n_head_kv)
    w.add_rope_dimension_count(c.rope_dim)
    w.add_rope_freq_base(c.rope_base)
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_vocab_size(c.n_vocab)
    if c.is_moe:
        w.add_expert_count(c.n_expert)
        w.add_expert_used_count(c.n_expert_used)
    tokens, scores, types = llama_vocab(c.n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores.tolist())
    w.add_token_types(types.tolist())
    w.add_unk_token_id(_UNK)
    w.add_bos_token_id(_BOS)
    w.add_eos_token_id(_EOS)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    for t in tensors:
        nbytes = int(np.prod(t.byte_shape))
        w.add_tensor_info(t.name, t.byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=t.qtype)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in tensors:
            # One tensor at a time; a big one is assembled from row chunks.
            data = np.empty(t.byte_shape, np.uint8).reshape(-1, t.byte_shape[-1])
            pos = 0
            for chunk in _matrix_chunks(t, rng):
                chunk = chunk.reshape(-1, data.shape[1])
                data[pos:pos + len(chunk)] = chunk
                pos += len(chunk)
            w.write_tensor_data(data)
    finally:
        w.close()
    return path


def _cli() -> None:
    import typer

    def run(
        out: Path = typer.Argument(..., help="GGUF file to write"),
        preset: str = typer.Option("tiny-moe", help=f"shapes: {', '.join(PRESETS)}"),
        layers: int = typer.Option(None, help="number of blocks (default: the preset's)"),
        quant: str = typer.Option("q4_k_m", help=f"quant mix: {', '.join(MIXES)}"),
        layout: str = typer.Option("merged", help="expert layout: merged or per_expert"),
        seed: int = typer.Option(0, help="random seed"),
    ) -> None:
        """Write a llama-architecture GGUF with random weights (for tests and benchmarks)."""
        if preset not in PRESETS:
            raise typer.BadParameter(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        config = PRESETS[preset]
        if layers is not None:
            config = dataclasses.replace(config, n_layer=layers)
        write_model(out, config, quant, layout, seed)
        typer.echo(f"wrote {out} ({out.stat().st_size / 1e9:.2f} GB)", err=True)

    typer.run(run)


if __name__ == "__main__":
    _cli()
