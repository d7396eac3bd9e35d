"""The model's hyper-parameters, read from GGUF metadata."""

from __future__ import annotations

from dataclasses import dataclass

from .gguf_file import GGUFError, GGUFFile

SUPPORTED_ARCHITECTURES = ("llama",)


@dataclass(frozen=True)
class ModelConfig:
    """A llama-architecture model; Mixtral 8x7B's values as defaults."""

    n_vocab: int = 32000
    n_embd: int = 4096
    n_layer: int = 32
    n_ff: int = 14336
    n_head: int = 32
    n_head_kv: int = 8
    n_ctx_train: int = 32768
    rope_dim: int = 128
    rope_base: float = 1e6
    norm_eps: float = 1e-5
    n_expert: int = 8  # 0 for a dense model
    n_expert_used: int = 2
    tied_output: bool = False
    name: str = ""

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> ModelConfig:
        arch = f.get("general.architecture")
        if arch is None:
            raise GGUFError("no general.architecture in the file")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise GGUFError(f"unsupported architecture {arch!r} "
                            f"(mixlocal runs: {', '.join(SUPPORTED_ARCHITECTURES)})")

        def key(name, default=None):
            value = f.get(f"{arch}.{name}", default)
            if value is None:
                raise GGUFError(f"missing metadata key {arch}.{name}")
            return value

        n_embd = int(key("embedding_length"))
        n_head = int(key("attention.head_count"))
        if n_head <= 0 or n_embd % n_head:
            raise GGUFError(f"embedding_length {n_embd} is not a multiple of "
                            f"head_count {n_head}")
        n_head_kv = int(key("attention.head_count_kv", n_head))
        if n_head_kv <= 0 or n_head % n_head_kv:
            raise GGUFError(f"head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
        n_expert = int(key("expert_count", 0))
        n_expert_used = int(key("expert_used_count", 0))
        if n_expert and not 0 < n_expert_used <= n_expert:
            raise GGUFError(f"expert_used_count {n_expert_used} is not in 1..{n_expert}")
        tokens = f.get("tokenizer.ggml.tokens")
        embd = f.tensors.get("token_embd.weight")
        if embd is None:
            raise GGUFError("missing tensor token_embd.weight")
        n_vocab = int(key("vocab_size", len(tokens) if tokens is not None else embd.shape[0]))
        return cls(
            n_vocab=n_vocab,
            n_embd=n_embd,
            n_layer=int(key("block_count")),
            n_ff=int(key("feed_forward_length")),
            n_head=n_head,
            n_head_kv=n_head_kv,
            n_ctx_train=int(key("context_length", 4096)),
            rope_dim=int(key("rope.dimension_count", n_embd // n_head)),
            rope_base=float(key("rope.freq_base", 10000.0)),
            norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            n_expert=n_expert,
            n_expert_used=n_expert_used,
            tied_output="output.weight" not in f.tensors,
            name=str(f.get("general.name", "")),
        )
