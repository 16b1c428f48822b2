#!/usr/bin/env python3
"""The project's two entry points: `python3 dev.py demo` (the main job) and `python3 dev.py test` (the test suite).

Each sets itself up first: a virtual environment in .venv with the pinned dependencies of requirements.lock.
Needs only Python 3.10+, pip and npm (the real-CLI tests install Claude Code and Gemini CLI); `test` also installs
Debian's redis-server and chromium when they are missing and it runs as root. Exits with the status of what it ran.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")
BIN = os.path.join(VENV, "bin")
PYTHON = os.path.join(BIN, "python")
STAMP = os.path.join(VENV, ".hypervisor-installed")


def say(text: str) -> None:
    print(f"[dev] {text}", flush=True)


def run(*args: str, cwd: str = ROOT, env: dict | None = None) -> None:
    say(" ".join(args))
    result = subprocess.run(args, cwd=cwd, env=env)
    if result.returncode:
        sys.exit(result.returncode)


def setup() -> None:
    """Create .venv and install the package with its pinned (test) dependencies, unless already up to date."""
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "requirements.lock"):
        with open(os.path.join(ROOT, name), "rb") as handle:
            digest.update(handle.read())
    wanted = digest.hexdigest()
    if os.path.exists(STAMP) and open(STAMP).read() == wanted and os.path.exists(PYTHON):
        compile_src()
        return
    if not os.path.exists(PYTHON):
        say(f"creating {VENV}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    run(PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "-c", "requirements.lock", "-e", ".[test]")  # fmt: skip
    with open(STAMP, "w") as handle:
        handle.write(wanted)
    compile_src()


def compile_src() -> None:
    """Hash-checked .pyc files for src/hypervisor, for this python3 (the one hooks.json runs), even under
    PYTHONDONTWRITEBYTECODE: the hooks then start from bytecode in their first call."""
    run(sys.executable, "-m", "hypervisor.core.bytecode", cwd=os.path.join(ROOT, "src"))


def demo() -> None:
    """The main job: a supervisor run with the built-in triage agent over a fresh copy of examples/tasks."""
    work = os.path.join(ROOT, "build", "demo")
    shutil.rmtree(work, ignore_errors=True)
    tasks = os.path.join(work, "tasks")
    shutil.copytree(os.path.join(ROOT, "examples", "tasks"), tasks)
    say(f"examples/tasks copied to {tasks}; running `hypervisor run` with the built-in triage agent")
    code = subprocess.run(
        [os.path.join(BIN, "hypervisor"), "run", "--tasks", tasks, "--workers", "4"], cwd=work
    ).returncode
    run(os.path.join(BIN, "hypervisor"), "stats", "--by-project", "--tasks", tasks)
    say(
        f"done (run exit {code}): triaged tasks in {tasks}; `.venv/bin/hypervisor status --tasks {tasks}` shows the run"
    )
    sys.exit(code)


def ensure_debian_package(binary: str, package: str, why: str) -> None:
    """Install Debian's `package` when `binary` is missing (root and apt-get, as on CI); elsewhere say what to
    install. Never skipped: without it the tests that need it fail."""
    if shutil.which(os.path.basename(binary)) or os.path.exists(binary):
        return
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        say(f"{binary} is missing and cannot be installed from here (needs root and apt-get): install it "
            f"(Debian/Ubuntu: apt-get install {package}), or {why} fail")  # fmt: skip
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = [apt, "install", "-y", "--no-install-recommends", package]
    say(f"installing Debian's {package}: {why} need it")
    if subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        run(apt, "update", env=env)
        run(*command, env=env)


def ensure_redis_server() -> None:
    """The Redis backend's tests start their own redis-server."""
    ensure_debian_package("/usr/bin/redis-server", "redis-server", "the Redis backend tests")


def ensure_chromium() -> None:
    """The board's tests drive Debian's chromium through Playwright (its own browser download is not used)."""
    ensure_debian_package("/usr/bin/chromium", "chromium", "the board's browser tests (tests/test_board.py)")


def test(pytest_args: list[str]) -> None:
    """The whole test suite."""
    ensure_redis_server()
    ensure_chromium()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([PYTHON, "-m", "pytest", *pytest_args], cwd=ROOT, env=env)
    sys.exit(result.returncode)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test", "setup"):
        print(__doc__)
        print("usage: python3 dev.py demo | test [pytest args...] | setup")
        sys.exit(2)
    setup()
    if sys.argv[1] == "demo":
        demo()
    elif sys.argv[1] == "test":
        test(sys.argv[2:])


if __name__ == "__main__":
    main()
