"""Shared fixtures: task stores built in temporary folders, and a way to run the real CLI."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from npm_tools import CLAUDE_CODE_VERSION, GEMINI_CLI_VERSION, cli_version, ensure_claude, ensure_gemini

from hypervisor.claims.backend import open_claims
from hypervisor.claims.queue import TaskQueue
from hypervisor.core.config import Config
from hypervisor.tasks.store import TaskStore

REPO = Path(__file__).resolve().parent.parent
HYPERVISOR = [sys.executable, "-m", "hypervisor"]

# The one rule for what a hook call may load of the package (a prefix rule, not a list of modules): the light core,
# the claim records and backends, and the hooks themselves. No task-file parser, queue, supervisor, triage or front.
HOOK_PATH_PACKAGES = ("hypervisor.core", "hypervisor.hooks")
HOOK_PATH_CLAIMS = ("records", "backend", "redisbackend", "redisscripts", "resp", "workers")


def on_hook_path(module: str) -> bool:
    """Whether the hook path may load `module` (any module outside the package: yes, other tests ban those)."""
    if module != "hypervisor" and not module.startswith("hypervisor."):
        return True
    if module in ("hypervisor", "hypervisor.claims") or module.startswith(tuple(p + "." for p in HOOK_PATH_PACKAGES)):
        return True
    return module in HOOK_PATH_PACKAGES or module in {f"hypervisor.claims.{name}" for name in HOOK_PATH_CLAIMS}


def off_hook_path(modules) -> list[str]:
    """The package's modules among `modules` the hook path may not load, sorted."""
    return sorted(m for m in modules if not on_hook_path(m))


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


def make_queue(root: Path, backend: str = "file", config: Config | None = None) -> TaskQueue:
    """A queue on `root` whose claims live in `backend` (a spec: `file` or a Redis URL)."""
    store = TaskStore(str(root))
    return TaskQueue(store, config, open_claims(backend, store.state))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_redis(folder: Path, addresses: tuple[str, ...] = ("127.0.0.1",), port: int | None = None,
                  extra: tuple[str, ...] = (), wait_seconds: float = 20) -> Iterator[int]:  # fmt: skip
    """A private redis-server (Debian's package; `python3 dev.py test` installs it) bound to `addresses`,
    persisting nothing, answering PING on each; its port. Stopped on leaving, error or not.

    Without the binary the Redis tests fail, never skip: the claim contract must be proven on both backends."""
    exe = shutil.which("redis-server") or next((p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server")
                                                if os.path.exists(p)), None)  # fmt: skip
    if exe is None:
        pytest.fail("redis-server is not installed: `apt-get install redis-server` (python3 dev.py test does this "
                    "when run as root); the Redis backend tests need it", pytrace=False)  # fmt: skip
    port = port or free_port()
    log = folder / "redis.log"
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", *addresses, "--save", "", "--appendonly", "no",
                             "--dir", str(folder), "--logfile", str(log), *extra])  # fmt: skip
    try:
        deadline = time.monotonic() + wait_seconds
        for address in addresses:
            while not _answers_ping(address, port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text()[-3000:] if log.exists() else f"({log} was not written)"
                    pytest.fail(f"redis-server did not answer on {address}:{port}: {tail}")
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers_ping(address: str, port: int) -> bool:
    try:  # the connection is closed at once: tests that count the server's clients see none left from here
        with socket.create_connection((address, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> str:
    """The URL of a private redis-server on 127.0.0.1 (also on a unix socket) shared by the session's tests."""
    folder = tmp_path_factory.mktemp("redis")
    with running_redis(folder, extra=("--unixsocket", str(folder / "redis.sock"))) as port:
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture(params=["file", "redis"])
def backend(request) -> str:
    """Each claim-contract test runs twice: claims in the task folder, and claims on Redis (own namespace)."""
    if request.param == "file":
        return "file"
    return f"{request.getfixturevalue('redis_server')}?namespace=t{uuid.uuid4().hex[:12]}"


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, check: int | None = None):
    """Run the real `hypervisor` CLI in a subprocess; `check` asserts its exit code."""
    full_env = dict(os.environ)
    full_env.pop("HYPERVISOR_TASKS", None)
    full_env.update(env or {})
    result = subprocess.run([*HYPERVISOR, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)
    if check is not None:
        assert result.returncode == check, (result.returncode, result.stdout, result.stderr)
    return result


HOG_PROCESSES = max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2)
# Busy, but it ends by itself if pytest dies without killing it (orphaned) or after 15 minutes at most.
HOG = ("import os, sys, time\nparent, end = int(sys.argv[1]), time.monotonic() + 900\n"
       "while os.getppid() == parent and time.monotonic() < end:\n    for _ in range(200000): pass\n")  # fmt: skip


@pytest.fixture
def cpu_hog() -> Iterator[list[int]]:
    """Busy processes beside the test, one per usable core (2 on CI's 2 cores), killed when it ends; their pids.

    For the tests whose outcome could hang on start-up order (an MCP server connecting before Claude Code's first
    request, a subagent starting before its tools exist): under this load such a race is mostly lost, so a test
    that only passes when it is won fails in CI too, not only on somebody's busy machine."""
    procs = [subprocess.Popen([sys.executable, "-S", "-c", HOG, str(os.getpid())], stdin=subprocess.DEVNULL)
             for _ in range(HOG_PROCESSES)]  # fmt: skip
    print(f"cpu_hog: {len(procs)} busy processes run beside this test (pids {', '.join(str(p.pid) for p in procs)})")
    try:
        yield [proc.pid for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


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


def wait_for(predicate, what: str, timeout: float = 30.0):
    """The first true value of `predicate()`, polled every 50 ms; AssertionError naming `what` after `timeout` s
    (a guard against hanging, never a speed claim)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
