"""Bad files raise one clear GGUFError; good ones open without copying weights."""

from __future__ import annotations

import shutil
import struct
import time

import pytest
from gguf.constants import GGMLQuantizationType as QT

from mixlocal.gguf_file import GGUFError
from mixlocal.model import Model


def patch_tensor_info(path, name: str, *, dims=None, qtype=None, rename=None) -> None:
    """Edit one tensor's entry in a GGUF header in place (same byte length)."""
    data = bytearray(path.read_bytes())
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.index(key) + len(key)
    (n_dims,) = struct.unpack_from("<I", data, at)
    if rename is not None:
        assert len(rename) == len(name)
        data[at - len(name):at] = rename.encode()
    if dims is not None:
        struct.pack_into(f"<{n_dims}Q", data, at + 4, *dims)
    if qtype is not None:
        struct.pack_into("<I", data, at + 4 + 8 * n_dims, qtype)
    path.write_bytes(bytes(data))


@pytest.fixture
def copy(tiny_model, tmp_path):
    def make(kind="moe", quant="q8_0"):
        dst = tmp_path / f"{kind}-{quant}.gguf"
        shutil.copy(tiny_model(kind, quant), dst)
        return dst
    return make


def test_not_gguf(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("this is a text file, not a model\n")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        Model.load(path)
    with pytest.raises(GGUFError, match="cannot read"):
        Model.load(tmp_path / "absent.gguf")


def test_truncated_anywhere(copy):
    """Cut at many points (header, vocabulary, tensor data): an error, quickly, each time."""
    path = copy()
    data = path.read_bytes()
    cuts = [8, 20, 40, 100, 1000, 5000, 20000, len(data) // 2, len(data) - 1]
    for cut in cuts:
        path.write_bytes(data[:cut])
        start = time.perf_counter()
        with pytest.raises(GGUFError, match="not a GGUF|truncated"):
            Model.load(path)
        assert time.perf_counter() - start < 2.0


def test_missing_tensor(copy):
    path = copy()
    patch_tensor_info(path, "blk.1.attn_k.weight", rename="blk.1.attn_k.weighX")
    with pytest.raises(GGUFError, match="missing tensor blk.1.attn_k.weight"):
        Model.load(path)


def test_tensor_of_the_wrong_shape(copy):
    path = copy()
    # attn_k is (32, 64) in numpy order, ggml dims (64, 32): swap them, same byte count.
    patch_tensor_info(path, "blk.0.attn_k.weight", dims=(32, 64))
    with pytest.raises(GGUFError, match=r"blk.0.attn_k.weight has shape \[64, 32\], "
                                        r"expected \[32, 64\]"):
        Model.load(path)


def test_unknown_architecture(copy):
    path = copy()
    data = path.read_bytes()
    key = b"general.architecture" + struct.pack("<IQ", 8, 5) + b"llama"
    path.write_bytes(data.replace(key, key[:-5] + b"gpt99", 1))
    with pytest.raises(GGUFError, match="unsupported architecture 'gpt99'"):
        Model.load(path)


def test_unsupported_quant_type_names_tensor_and_type(copy):
    path = copy("kquant", "q4_k_m")
    # IQ2_XXS blocks are smaller than Q4_K's, so the data still lies within the file.
    patch_tensor_info(path, "blk.0.ffn_up_exps.weight", qtype=QT.IQ2_XXS)
    with pytest.raises(GGUFError, match="blk.0.ffn_up_exps.weight has type IQ2_XXS"):
        Model.load(path)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_opening_copies_no_weights(smollm2_path):
    size = smollm2_path.stat().st_size
    before = _rss_bytes()
    model = Model.load(smollm2_path)
    grown = _rss_bytes() - before
    w = model.weights
    assert w.nbytes > 0.9 * size
    # Every matrix is a read-only view of the map (a copy would be writeable).
    matrices = [w.token_embd, w.output] + [m for layer in w.layers for m in (
        layer.wq, layer.wk, layer.wv, layer.wo,
        *(x for e in layer.experts for x in (e.gate, e.up, e.down)))]
    assert not any(m.data.flags.writeable for m in matrices)
    # What does grow is the parsed metadata: 49k vocabulary strings and merges (~10 MB).
    assert grown < 0.2 * size, f"opening grew RSS by {grown / 1e6:.1f} MB of {size / 1e6:.0f}"


def test_type_table_matches_gguf_py():
    """mixlocal's copy of GGML's type numbers and block sizes (kept so that a start
    need not import gguf-py) agrees with gguf-py's, type by type."""
    from gguf.constants import GGML_QUANT_SIZES

    from mixlocal.ggml_types import BLOCK_SIZES, GGMLType
    theirs = {q.value: q for q in QT}
    assert len(theirs) >= 30
    for t in GGMLType:
        if t.value in theirs:  # an older gguf-py lacks the newest types
            assert theirs[t.value].name == t.name
            assert BLOCK_SIZES[t] == GGML_QUANT_SIZES[theirs[t.value]], t.name


def test_starting_does_not_import_gguf_py():
    """`import gguf` costs a start about 0.4 s: the CLI and the model stay clear of it."""
    import subprocess
    import sys
    code = "import sys, mixlocal.cli.app, mixlocal.model; print('gguf' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
