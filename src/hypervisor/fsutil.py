"""Crash-safe file primitives: atomic replace, per-key advisory locks, appends, and test fault points."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import time
from typing import Iterator

FAULT_ENV = "HYPERVISOR_FAULT"


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL if HYPERVISOR_FAULT names this point; how tests crash code at exact places."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path: str, data: bytes) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never a mix: temp file, fsync, os.replace."""
    import tempfile  # not needed by read-only commands; keeps their start-up light

    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.fchmod(fd, os.stat(path).st_mode & 0o7777)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            fault_point("write-partial")
            view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        fault_point("write-before-replace")
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory or ".")


def _fsync_dir(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError as error:  # some filesystems refuse fsync on directories
        if error.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(dfd)


def atomic_write_json(path: str, value: object) -> None:
    """Write `value` as JSON to `path` atomically."""
    atomic_write(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: str) -> object | None:
    """The JSON value in `path`, or None when the file does not exist."""
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def locked(lock_path: str, blocking: bool = True, timeout: float | None = None) -> Iterator[bool]:
    """Hold an exclusive flock on `lock_path` (created, never deleted); yields False if busy and not waiting.

    `blocking=False` tries once; `timeout` waits at most that many seconds; otherwise it waits as long as it takes.

    The kernel drops the lock when its holder dies, even by SIGKILL, so a crash never leaves it held.
    Lock files are never unlinked: unlinking after flock lets two processes lock two different inodes.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _acquire(fd, blocking, timeout):
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _acquire(fd: int, blocking: bool, timeout: float | None) -> bool:
    if blocking and timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + (timeout or 0.0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if not blocking or time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def append_line(path: str, line: str) -> None:
    """Append one line with a single O_APPEND write, so concurrent appenders never interleave within a line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)
