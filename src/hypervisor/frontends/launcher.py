"""Finding, or making once, an interpreter that has hypervisor's dependencies (standard library only).

The plugin is installed by copying its files; nothing installs its Python dependencies. The first start makes a
virtual environment from the pinned requirements.lock in the plugin's data folder, in a process of its own that
holds a lock (so concurrent first starts build it once, and a session that ends early does not stop it), and marks
it complete with a stamp written last (so a build cut short is redone, never used).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time

MODULES = (
    "yaml",
    "click",
    "jsonschema",
    "rich",
    "mcp",
    "redis",
    "starlette",
    "uvicorn",
    "sse_starlette",
    "markdown_it",
)
CHECK = f"import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in {MODULES!r}) else 1)"
STAMP = ".hypervisor-complete"


def has_dependencies(python: str) -> bool:
    """Whether `python` exists and can import every runtime dependency."""
    if not python or not os.path.exists(python):
        return False
    # Compare unresolved paths: a venv's python is a symlink to the same binary, with other site-packages.
    if os.path.abspath(python) == os.path.abspath(sys.executable) and not sys.flags.no_site:
        import importlib.util

        return all(importlib.util.find_spec(module) for module in MODULES)
    return subprocess.run([python, "-c", CHECK], capture_output=True).returncode == 0


def data_venv(root: str, env: dict) -> str:
    """Where the first start builds the environment: $CLAUDE_PLUGIN_DATA (Claude Code's per-plugin data folder),
    else ~/.cache/hypervisor; named by the lock file's hash, so a new lock gets a new environment."""
    import hashlib

    with open(os.path.join(root, "requirements.lock"), "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:12]
    base = env.get("CLAUDE_PLUGIN_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "hypervisor")
    return os.path.join(base, f"venv-{digest}")


def venv_python(target: str) -> str:
    return os.path.join(target, "bin", "python")


def ready_python(root: str, env: dict) -> str | None:
    """The first interpreter that has the dependencies: $HYPERVISOR_PYTHON, <plugin>/.venv, the one running this,
    the environment a first start built. None if there is none yet."""
    built = data_venv(root, env)
    candidates = [env.get("HYPERVISOR_PYTHON", ""), venv_python(os.path.join(root, ".venv")), sys.executable]
    for python in candidates:
        if python and has_dependencies(python):
            return python
    if os.path.exists(os.path.join(built, STAMP)):
        return venv_python(built)
    return None


def runtime_requirements(root: str) -> list[str]:
    """The package's own dependencies (pyproject.toml's `dependencies`), without the test tools in the lock."""
    names: list[str] = []
    inside = False
    with open(os.path.join(root, "pyproject.toml"), encoding="utf-8") as handle:
        for line in handle:
            stripped = line.strip()
            if stripped.startswith("dependencies = ["):
                inside = True
            elif inside and stripped.startswith("]"):
                break
            elif inside and stripped.startswith('"'):
                names.append(stripped.strip('",'))
    return names


def build(root: str, env: dict, log=sys.stderr) -> str:
    """Build the data-folder environment unless it is complete; returns its python. Holds the lock throughout."""
    target = data_venv(root, env)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(target, STAMP)):
            return venv_python(target)
        started = time.monotonic()
        log.write(f"hypervisor: first start: installing dependencies into {target} (once; about a minute)\n")
        log.flush()
        import venv

        venv.EnvBuilder(with_pip=True, clear=True).create(target)
        command = [venv_python(target), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                   "--prefer-binary", "-c", os.path.join(root, "requirements.lock"), *runtime_requirements(root)]  # fmt: skip
        result = subprocess.run(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        if result.returncode:
            raise RuntimeError(
                f"could not install hypervisor's dependencies into {target} (pip exit {result.returncode}); "
                f"the MCP server's log has pip's output. Retry by restarting the session, or install them by hand: "
                f"{' '.join(command)}"
            )
        with open(os.path.join(target, STAMP), "w") as stamp:
            stamp.write(f"built in {time.monotonic() - started:.1f}s\n")
        log.write(f"hypervisor: dependencies installed in {time.monotonic() - started:.1f}s\n")
        log.flush()
        return venv_python(target)


def build_detached(root: str, env: dict) -> subprocess.Popen:
    """Run `build` in a process of its own session: it finishes even if the caller's session ends first."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[2]); from hypervisor.frontends import launcher; "
        "import os; launcher.build(sys.argv[1], dict(os.environ))"
    )
    src = os.path.join(root, "src")
    return subprocess.Popen([sys.executable, "-S", "-c", script, root, src], env=env, stdin=subprocess.DEVNULL,
                            stdout=sys.stderr, start_new_session=True)  # fmt: skip


def python_for(root: str, env: dict) -> str:
    """An interpreter with the dependencies, building the environment first if needed (blocking)."""
    python = ready_python(root, env)
    if python is not None:
        return python
    process = build_detached(root, env)
    if process.wait() != 0:
        raise RuntimeError(f"could not install hypervisor's dependencies into {data_venv(root, env)}; "
                           "the log above says why")  # fmt: skip
    return venv_python(data_venv(root, env))


def child_env(root: str, env: dict) -> dict:
    """The environment for `python -m hypervisor`: this plugin's source first on the path."""
    child = dict(env)
    child["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.join(root, "src"), env.get("PYTHONPATH", "")) if p)
    return child
