"""Running the real `mixlocal` console script in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_beside = Path(sys.executable).with_name("mixlocal")
MIXLOCAL = str(_beside) if _beside.exists() else shutil.which("mixlocal")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI run: its own cache folder, no colour, no default model."""
    env = {k: v for k, v in os.environ.items() if k != "MIXLOCAL_MODEL"}
    env.update(MIXLOCAL_HOME=str(home), NO_COLOR="1", COLUMNS="120", **extra)
    return env


def mixlocal(*args: str, home: Path, stdin: bytes | None = b"", timeout: float = 300,
             **env: str) -> subprocess.CompletedProcess:
    """Run `mixlocal ARGS` to completion; stdout and stderr as text."""
    assert MIXLOCAL, "the mixlocal console script is not installed (pip install -e .)"
    done = subprocess.run([MIXLOCAL, *args], input=stdin, capture_output=True,
                          env=cli_env(home, **env), timeout=timeout)
    return subprocess.CompletedProcess(done.args, done.returncode,
                                       done.stdout.decode("utf-8", "replace"),
                                       done.stderr.decode("utf-8", "replace"))


def assert_one_line_error(done: subprocess.CompletedProcess, code: int, *words: str) -> None:
    """Failed with `code`, nothing on stdout, one 'mixlocal: error:' line naming words."""
    assert done.returncode == code, (done.returncode, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mixlocal: error: "), done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"
