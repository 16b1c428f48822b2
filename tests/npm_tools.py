"""Install pinned npm CLIs (Claude Code, Gemini CLI) into build/npm/ for the real-CLI tests.

`ensure_cli(package, version, binary)` runs `npm install --prefix build/npm/<package>-<version> <package>@<version>`
once (guarded by an fcntl lock so parallel test processes don't install twice) and returns the path of
`<dir>/node_modules/.bin/<binary>`. A failure raises `NpmInstallError`: tests that need the CLI must FAIL, not skip.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path

# The versions the reference notes (/work/shared/reference/*.md) were checked against; both confirmed with `npm view`.
CLAUDE_CODE_PACKAGE = "@anthropic-ai/claude-code"
CLAUDE_CODE_VERSION = "2.1.328"
GEMINI_CLI_PACKAGE = "@google/gemini-cli"
GEMINI_CLI_VERSION = "0.61.0"

REPO = Path(__file__).resolve().parent.parent
NPM_ROOT = REPO / "build" / "npm"
INSTALL_TIMEOUT = 900  # seconds


class NpmInstallError(RuntimeError):
    """npm is missing, or installing / running the pinned CLI failed."""


def install_dir(package: str, version: str) -> Path:
    """`build/npm/<package-sanitised>-<version>`, e.g. build/npm/anthropic-ai-claude-code-2.1.328."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", package.lstrip("@")).strip("-")
    return NPM_ROOT / f"{safe}-{version}"


def _installed(directory: Path, package: str, version: str, binary: str) -> bool:
    stamp = directory / ".installed"
    return (
        stamp.is_file()
        and stamp.read_text().strip() == f"{package}@{version}"
        and (directory / "node_modules" / ".bin" / binary).exists()
    )


def ensure_cli(package: str, version: str, binary: str) -> str:
    """Install `package@version` (once) and return the absolute path of its `binary` in node_modules/.bin."""
    directory = install_dir(package, version)
    exe = directory / "node_modules" / ".bin" / binary
    if _installed(directory, package, version, binary):
        return str(exe)
    npm = shutil.which("npm")
    if not npm:
        raise NpmInstallError(f"npm is not on PATH; it is needed to install {package}@{version}")
    NPM_ROOT.mkdir(parents=True, exist_ok=True)
    lock_path = NPM_ROOT / f".{directory.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _installed(directory, package, version, binary):  # another process installed it meanwhile
                return str(exe)
            directory.mkdir(parents=True, exist_ok=True)
            (directory / ".installed").unlink(missing_ok=True)
            cmd = [npm, "install", "--prefix", str(directory), "--no-audit", "--no-fund",
                   "--loglevel=error", f"{package}@{version}"]  # fmt: skip
            try:
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
            except subprocess.TimeoutExpired as exc:
                raise NpmInstallError(f"{' '.join(cmd)} timed out after {INSTALL_TIMEOUT}s") from exc
            if result.returncode != 0:
                raise NpmInstallError(
                    f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
                )
            if not exe.exists():
                raise NpmInstallError(f"{package}@{version} installed but {exe} is missing")
            # A placeholder left by a skipped postinstall (e.g. --ignore-scripts) exists but doesn't run.
            cli_version(str(exe))
            (directory / ".installed").write_text(f"{package}@{version}\n")
            return str(exe)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cli_version(exe: str, timeout: float = 60) -> str:
    """`<exe> --version` (first line); raises NpmInstallError if it doesn't run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLAUDE", "ANTHROPIC_"))}
    env["DISABLE_AUTOUPDATER"] = "1"
    try:
        result = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NpmInstallError(f"{exe} --version failed: {exc}") from exc
    if result.returncode != 0:
        raise NpmInstallError(f"{exe} --version exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""


def ensure_claude() -> str:
    """The pinned Claude Code binary."""
    return ensure_cli(CLAUDE_CODE_PACKAGE, CLAUDE_CODE_VERSION, "claude")


def ensure_gemini() -> str:
    """The pinned Gemini CLI binary."""
    return ensure_cli(GEMINI_CLI_PACKAGE, GEMINI_CLI_VERSION, "gemini")
