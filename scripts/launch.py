#!/usr/bin/env python3
"""Start `hypervisor` from the plugin folder this script lives in, with an interpreter that has its dependencies.

Usage: python3 launch.py ARGS...   (e.g. `launch.py mcp`), as .mcp.json and gemini-extension.json do.

The code always comes from <this folder>/../src, never from the current folder or the plugin folder's name. The
interpreter is the first that has the dependencies: $HYPERVISOR_PYTHON, <plugin>/.venv/bin/python, this one. If
none has, a virtual environment is made once in $CLAUDE_PLUGIN_DATA (or ~/.cache/hypervisor) from the pinned
requirements.lock, with progress on stderr (stdout belongs to the MCP protocol). Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
MODULES = ("yaml", "click", "jsonschema", "rich", "mcp")
CHECK = "import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in %r) else 1)" % (MODULES,)


def has_dependencies(python: str) -> bool:
    if not os.path.exists(python):
        return False
    # Compare unresolved paths: a venv's python is a symlink to the same binary, with other site-packages.
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        import importlib.util

        return all(importlib.util.find_spec(module) for module in MODULES)
    return subprocess.run([python, "-c", CHECK], capture_output=True).returncode == 0


def bootstrap() -> str:
    """A venv with the pinned dependencies, made on first use and reused after."""
    with open(os.path.join(ROOT, "requirements.lock"), "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:12]
    base = os.environ.get("CLAUDE_PLUGIN_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "hypervisor")
    target = os.path.join(base, f"venv-{digest}")
    python = os.path.join(target, "bin", "python")
    if has_dependencies(python):
        return python
    print(f"hypervisor: first start: installing dependencies into {target} (once)", file=sys.stderr, flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    result = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", os.path.join(ROOT, "requirements.lock")],  # fmt: skip
        stdout=sys.stderr,
    )
    if result.returncode:
        sys.exit(f"hypervisor: could not install dependencies into {target} (pip exit {result.returncode})")
    return python


def main() -> None:
    choices = [os.environ.get("HYPERVISOR_PYTHON", ""), os.path.join(ROOT, ".venv", "bin", "python"), sys.executable]
    python = next((c for c in choices if c and has_dependencies(c)), None) or bootstrap()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH", "")) if p)
    os.execve(python, [python, "-m", "hypervisor", *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
