"""Helpers shared by the benchmarks: how busy the rest of the machine was, which version of src/ ran, a redis-server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import NamedTuple

REDIS_SERVER_PATHS = ("/usr/bin/redis-server", "/usr/sbin/redis-server")


class ForeignLoad:
    """CPU-seconds per second used by processes other than this one and its waited-for children, over a span.

    Busy time from /proc/stat minus our own rusage; a few tenths is noise, 1+ means something else was running.
    `helpers`: pids of servers the benchmark started and still runs (a redis-server); their CPU counts as ours.
    """

    def __init__(self, helpers: tuple[int, ...] = ()) -> None:
        self.helpers = helpers
        self.helper_cpu = 0.0
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float, float]:
        import resource

        try:
            with open("/proc/stat", encoding="ascii") as handle:
                fields = [int(x) for x in handle.readline().split()[1:]]
            busy = (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")  # user nice system irq softirq steal
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        ours = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                   for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))  # fmt: skip
        return time.monotonic(), busy, ours, sum(process_cpu(pid) for pid in self.helpers)

    def stop(self) -> float:
        """Foreign CPU-s per second since the start; also sets `helper_cpu`, the helpers' CPU-s per second."""
        end = self._sample()
        wall = end[0] - self.start[0]
        if wall <= 0:
            return 0.0
        helpers = end[3] - self.start[3]
        self.helper_cpu = helpers / wall
        return max(0.0, (end[1] - self.start[1]) - (end[2] - self.start[2]) - helpers) / wall


def process_cpu(pid: int) -> float:
    """CPU-seconds (user + system) a running process has used so far, from /proc/<pid>/stat; 0.0 if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()  # the command name in (...) may contain spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def source_fingerprint() -> str:
    """sha256 (12 hex) of the hypervisor package's .py files, to tie the figures to one version of src/."""
    import hashlib

    import hypervisor

    package = os.path.dirname(hypervisor.__file__)
    digest = hashlib.sha256()
    for folder, subfolders, names in os.walk(package):  # in a fixed order: subfolders sorted in place
        subfolders[:] = sorted(name for name in subfolders if name != "__pycache__")
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, "rb") as handle:
                    digest.update(os.path.relpath(path, package).encode() + b"\0" + handle.read())
    return digest.hexdigest()[:12]


class RedisServer(NamedTuple):
    url: str  # redis://127.0.0.1:<port>/0, without a namespace
    port: int
    pid: int
    version: str


@contextlib.contextmanager
def private_redis(folder: str, benchmark: str) -> Iterator[RedisServer]:
    """A redis-server of our own on a free 127.0.0.1 port, persisting nothing; stopped on leaving, error or not.

    Debian's /usr/bin/redis-server if present, else the first on PATH; SystemExit if there is none.
    """
    exe = next((p for p in REDIS_SERVER_PATHS if os.path.exists(p)), None) or shutil.which("redis-server")
    if exe is None:
        raise SystemExit(f"{benchmark} benchmark: redis-server is not installed, so the Redis rows cannot be measured. "
                         "Install it (Debian/Ubuntu: apt-get install redis-server) or pass --no-redis.")  # fmt: skip
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    version = next((word[2:] for word in version.split() if word.startswith("v=")), version.strip())
    os.makedirs(folder)
    port, log = free_port(), os.path.join(folder, "redis.log")
    server = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--dir", folder, "--logfile", log], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # fmt: skip
    try:
        wait_for_ping(port, server, log)
        yield RedisServer(f"redis://127.0.0.1:{port}/0", port, server.pid, version)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_ping(port: int, server: subprocess.Popen, log: str) -> None:
    """Return once the server answers PING; RuntimeError with its log if it exits or stays silent for 20 s."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            try:
                with open(log, encoding="utf-8", errors="replace") as handle:
                    tail = handle.read()[-2000:]
            except OSError:
                tail = "(no log)"
            raise RuntimeError(f"redis-server did not start on 127.0.0.1:{port}:\n{tail}")
        time.sleep(0.05)


def _die_with_parent() -> None:
    """In the redis-server child before exec: have Linux SIGTERM it if the benchmark dies, even by SIGKILL, when no
    `finally` runs."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def emit(text: str, report: dict, as_json: bool) -> None:
    """The table on stdout; with --json the JSON report on stdout and the table on stderr."""
    if as_json:
        print(text, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(text)


class Timed(NamedTuple):
    wall: float  # seconds
    cpu: float  # user + system seconds of the process (and any it waited for)
    returncode: int
    stdout: str
    stderr: str


def run_timed(argv: list[str], cwd: str, env: dict | None = None) -> Timed:
    """Run one process to its end, its output captured: wall and CPU seconds, exit code, stdout, stderr."""
    import resource

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    cpu, began = children_cpu(), time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return Timed(time.perf_counter() - began, children_cpu() - cpu, done.returncode, done.stdout, done.stderr)


def task_path(i: int, subfolders: int) -> str:
    """Where cached_store puts task `i`, relative to the task root."""
    return os.path.join(f"area-{i % subfolders}", f"task-{i:06d}.md")


def cached_store(base: str, size: int, version: int, task_text, label: str, subfolders: int,
                 path_of=None, extra_files: dict[str, str] | None = None) -> str:  # fmt: skip
    """The task root `base`/tasks of `size` generated tasks (`task_text(i)` each, over `subfolders` folders), made
    again only when its marker does not say this `version` and size.

    `path_of(i)`: another place for task `i` under the root (default task_path); `extra_files`: more files to
    write, by path under the root (a peer tool's config)."""
    root = os.path.join(base, "tasks")
    marker = store_marker(base)
    try:
        with open(marker, encoding="utf-8") as handle:
            if json.load(handle) == {"format": version, "size": size}:
                return root
    except (OSError, ValueError):
        pass
    print(f"[{label}] generating {size} tasks under {root} ...", file=sys.stderr, flush=True)
    shutil.rmtree(base, ignore_errors=True)
    path_of = path_of or (lambda i: task_path(i, subfolders))
    for rel, text in [*(extra_files or {}).items(), *((path_of(i), task_text(i)) for i in range(size))]:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    with open(marker, "w", encoding="utf-8") as handle:
        json.dump({"format": version, "size": size}, handle)
    return root


def store_marker(base: str) -> str:
    return os.path.join(base, "generated.json")  # outside the task root, so no tool walks it


@contextlib.contextmanager
def changing_store(base: str) -> Iterator[None]:
    """While a benchmark changes a cached store (and puts it back): its marker is set aside, so a run that stops
    half way leaves the store to be generated again rather than reused as it was left."""
    marker = store_marker(base)
    with open(marker, encoding="utf-8") as handle:
        saved = handle.read()
    os.remove(marker)
    yield
    with open(marker, "w", encoding="utf-8") as handle:
        handle.write(saved)
