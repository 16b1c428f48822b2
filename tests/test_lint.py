"""The linter and the formatter (ruff, configured in pyproject.toml) over everything Python in the repository."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

PATHS = ["src", "tests", "bench", "scripts", "hooks", "dev.py"]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args, *PATHS], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_ruff_check_passes():
    result = ruff("check", "--no-cache")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_ruff_format_leaves_every_file_as_it_is():
    result = ruff("format", "--check", "--no-cache")
    assert result.returncode == 0, "run `.venv/bin/ruff format`:\n" + result.stdout[-6000:] + result.stderr[-2000:]
