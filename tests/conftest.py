"""Shared fixtures: task stores built in temporary folders, and a way to run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hypervisor.store import TaskStore
from hypervisor.taskqueue import TaskQueue
from npm_tools import CLAUDE_CODE_VERSION, GEMINI_CLI_VERSION, cli_version, ensure_claude, ensure_gemini

REPO = Path(__file__).resolve().parent.parent
HYPERVISOR = [sys.executable, "-m", "hypervisor"]


def write_task(root: Path, task_id: str, body: str = "Some work.\n", folder: str = "", **fields) -> Path:
    """Write `<root>/<folder>/<task_id>.md` with `fields` as frontmatter."""
    directory = root / folder
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{task_id}.md"
    front = yaml.safe_dump(fields, sort_keys=False) if fields else ""
    path.write_text(f"---\n{front}---\n{body}", encoding="utf-8")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "tasks"
    path.mkdir()
    return path


@pytest.fixture
def queue(root: Path) -> TaskQueue:
    return TaskQueue(TaskStore(str(root)))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, check: int | None = None):
    """Run the real `hypervisor` CLI in a subprocess; `check` asserts its exit code."""
    full_env = dict(os.environ)
    full_env.pop("HYPERVISOR_TASKS", None)
    full_env.update(env or {})
    result = subprocess.run([*HYPERVISOR, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)
    if check is not None:
        assert result.returncode == check, (result.returncode, result.stdout, result.stderr)
    return result


def _pinned_cli(ensure, name: str, version: str) -> str:
    try:
        exe = ensure()
        found = cli_version(exe)
    except Exception as exc:  # noqa: BLE001 - report any install problem as a failure
        pytest.fail(f"could not install/run {name} {version}: {exc}", pytrace=False)
    assert found.startswith(version), found
    return exe


@pytest.fixture(scope="session")
def claude() -> str:
    """The pinned claude binary; installing it is part of the test (failure = test error, never a skip)."""
    return _pinned_cli(ensure_claude, "Claude Code", CLAUDE_CODE_VERSION)


@pytest.fixture(scope="session")
def gemini() -> str:
    """The pinned gemini binary; installing it is part of the test (failure = test error, never a skip)."""
    return _pinned_cli(ensure_gemini, "Gemini CLI", GEMINI_CLI_VERSION)
