"""Numba's cached kernels go when any of the package's sources change (jit_cache.py)."""

import os
import subprocess
import sys
from pathlib import Path

import mixlocal
from mixlocal.jit_cache import STAMP, cache_dir, drop_if_stale, sources_digest


def _package(root: Path) -> Path:
    """A package of two modules in two directories, each with cache files beside it."""
    for module in (root / "pkg" / "__init__.py", root / "pkg" / "sub" / "kernels.py"):
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_text("X = 1\n")
        _cached(module)
    return root / "pkg"


def _cached(module: Path) -> list[Path]:
    """Fake cache files of a module where Numba would keep them (and a .pyc there)."""
    files = [cache_dir(module) / f"{module.stem}.f-1.py311.{suffix}"
             for suffix in ("nbi", "1.nbc", "pyc")]
    for path in files:
        path.write_bytes(b"cached")
    return files


def test_cache_files_go_when_any_source_changes(tmp_path):
    package = _package(tmp_path)
    kernels = package / "sub" / "kernels.py"
    assert drop_if_stale(package)  # never checked: nothing says the caches are fresh
    assert (package / "__pycache__" / STAMP).read_text() == sources_digest(package)
    nbi, nbc, pyc = _cached(kernels)
    own = _cached(package / "__init__.py")
    assert not drop_if_stale(package)  # same sources
    assert all(path.exists() for path in (nbi, nbc, pyc, *own))
    kernels.write_text("X = 2\n")  # an edit in another directory than the stamp's
    assert drop_if_stale(package)
    assert [path.exists() for path in (nbi, nbc, pyc, *own)] == [False, False, True] * 2
    assert not drop_if_stale(package)


def test_a_new_source_file_counts_as_a_change(tmp_path):
    package = _package(tmp_path)
    drop_if_stale(package)
    nbi = _cached(package / "__init__.py")[0]
    (package / "sub" / "more.py").write_text("")
    assert drop_if_stale(package) and not nbi.exists()


def test_numba_cache_dir_is_where_the_files_go(tmp_path, monkeypatch):
    from numba import config
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "numba"))
    package = _package(tmp_path / "src")
    kernels = package / "sub" / "kernels.py"
    assert cache_dir(kernels).is_relative_to(tmp_path / "numba")
    assert not (package / "sub" / "__pycache__").exists()
    drop_if_stale(package)
    nbi = _cached(kernels)[0]
    kernels.write_text("X = 2\n")
    assert drop_if_stale(package) and not nbi.exists()


def test_importing_mixlocal_checks_its_caches(tmp_path):
    """In a fresh process with its own NUMBA_CACHE_DIR, importing the package leaves
    the digest of its sources in the cache."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", "import mixlocal"], env=env, check=True)
    package = Path(mixlocal.__file__).parent
    stamps = list(tmp_path.rglob(STAMP))
    assert [p.read_text() for p in stamps] == [sources_digest(package)]
