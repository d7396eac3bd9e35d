"""The float64 reference agrees with transformers' Mixtral and Mistral on the same weights,
so the yardstick the model is measured with is not checking itself.

GGUF files rotate adjacent pairs in RoPE where Hugging Face rotates halves; llama.cpp's
converter permutes the rows of q and k to bridge the two, and this test undoes it.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import Reference

torch = pytest.importorskip("torch", reason="torch is a test extra (pip install .[test])")
transformers = pytest.importorskip("transformers", reason="transformers is a test extra")

PROMPT = [1, 17, 300, 42, 42, 99, 260, 5, 311, 77, 8, 150]
# transformers computes attention and router softmaxes in float32 even in a float64
# model, so agreement is to float32 precision.
TOL = 1e-5


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation (pairs -> halves within each head)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def hf_model(ref: Reference, c, t):
    common = dict(vocab_size=c.n_vocab, hidden_size=c.n_embd, intermediate_size=c.n_ff,
                  num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
                  num_key_value_heads=c.n_head_kv, rms_norm_eps=c.norm_eps,
                  rope_theta=c.rope_base, max_position_embeddings=c.n_ctx_train,
                  tie_word_embeddings=False, attn_implementation="eager",
                  experts_implementation="eager")
    if c.is_moe:
        config = transformers.MixtralConfig(num_local_experts=c.n_expert,
                                            num_experts_per_tok=c.n_expert_used, **common)
        model = transformers.MixtralForCausalLM(config)
    else:
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**common))
    state = {"model.embed_tokens.weight": t["token_embd"], "model.norm.weight": t["output_norm"],
             "lm_head.weight": ref.output}
    for i in range(c.n_layer):
        hf, blk = f"model.layers.{i}", f"blk.{i}"
        state |= {
            f"{hf}.self_attn.q_proj.weight": unpermute(t[f"{blk}.attn_q"], c.n_head),
            f"{hf}.self_attn.k_proj.weight": unpermute(t[f"{blk}.attn_k"], c.n_head_kv),
            f"{hf}.self_attn.v_proj.weight": t[f"{blk}.attn_v"],
            f"{hf}.self_attn.o_proj.weight": t[f"{blk}.attn_output"],
            f"{hf}.input_layernorm.weight": t[f"{blk}.attn_norm"],
            f"{hf}.post_attention_layernorm.weight": t[f"{blk}.ffn_norm"],
        }
        if c.is_moe:
            gate, up, down = (t[f"{blk}.ffn_{m}_exps"] for m in ("gate", "up", "down"))
            state |= {f"{hf}.mlp.gate.weight": t[f"{blk}.ffn_gate_inp"],
                      f"{hf}.mlp.experts.gate_up_proj": np.concatenate([gate, up], axis=1),
                      f"{hf}.mlp.experts.down_proj": down}
        else:
            state |= {f"{hf}.mlp.{m}_proj.weight": t[f"{blk}.ffn_{m}"]
                      for m in ("gate", "up", "down")}
    model = model.double()
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k]
    return model.eval()


@pytest.mark.parametrize("kind", ["moe", "dense"])
def test_reference_matches_transformers(tiny_model, kind):
    from conftest import TINY
    ref = Reference(tiny_model(kind, "q8_0"))
    model = hf_model(ref, TINY[kind], ref.t)
    with torch.no_grad():
        want = model(torch.tensor([PROMPT])).logits[0].numpy()
    got = ref.logits(PROMPT)
    assert np.abs(got - want).max() < TOL * want.std()
