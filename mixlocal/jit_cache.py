"""Numba's cached kernels, dropped when any of mixlocal's sources change.

Numba keys a cached function on its own source file alone, but a compiled kernel
carries what it inlined from other files (simd.py's intrinsics, matvec.py's block
functions, the kernels a token step calls). After an upgrade or a `git pull` that
changed simd.py but not gemm.py, gemm.py's kernels would load from the cache with the
old simd.py inside: wrong results, or a crash. So a digest of all the package's
sources lies beside Numba's cache files, and those files go when it changes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from numba.core.caching import (InTreeCacheLocator, UserProvidedCacheLocator,
                                UserWideCacheLocator)

STAMP = "numba-sources.sha256"


def sources_digest(package: Path) -> str:
    """A digest of every .py file under package, names and contents."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_dir(module: Path) -> Path | None:
    """Where Numba caches the functions of a module file: the first place its own
    search accepts (NUMBA_CACHE_DIR, a writable __pycache__ beside the file, the user's
    cache directory)."""
    for locator in (UserProvidedCacheLocator, InTreeCacheLocator, UserWideCacheLocator):
        found = locator.from_function(cache_dir, str(module))
        if found is not None:
            return Path(found.get_cache_path())
    return None


def drop_if_stale(package: Path = Path(__file__).parent) -> bool:
    """Delete Numba's cache files for package when its sources differ from those at
    the last check (or there was none); True if it did."""
    stamp_dir = cache_dir(package / "__init__.py")
    if stamp_dir is None:
        return False
    digest = sources_digest(package)
    stamp = stamp_dir / STAMP
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    try:
        # one module per directory finds that directory's cache
        modules = {path.parent: path for path in package.rglob("*.py")}.values()
        for directory in filter(None, map(cache_dir, modules)):
            for path in directory.glob("*.nb[ic]"):
                path.unlink(missing_ok=True)
        temporary = stamp.with_suffix(f".{os.getpid()}")
        temporary.write_text(digest)
        temporary.replace(stamp)
    except OSError:
        return False
    return True
