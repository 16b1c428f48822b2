"""Crash-safe file primitives: atomic replace, per-key advisory locks, appends, and test fault points."""

from __future__ import annotations

import errno
import fcntl
import os
import time

from . import lightjson

FAULT_ENV = "HYPERVISOR_FAULT"
PAUSE_ENV = "HYPERVISOR_PAUSE"


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL if HYPERVISOR_FAULT names this point; how tests crash code at exact places."""
    _signal_at(FAULT_ENV, name, "SIGKILL")


def pause_point(name: str) -> None:
    """Stop this process (SIGSTOP) if HYPERVISOR_PAUSE names this point: how tests freeze a holder mid-claim."""
    _signal_at(PAUSE_ENV, name, "SIGSTOP")


def _signal_at(variable: str, name: str, signal_name: str) -> None:
    """The signal goes to the calling thread, which acts on it before it runs another line: sent to the process, it
    may be taken by another thread (an MCP server's event loop) while this one runs on past the point, into a lock."""
    if os.environ.get(variable) == name:
        import _thread
        import signal

        signal.pthread_kill(_thread.get_ident(), getattr(signal, signal_name))


def atomic_write(path: str, data: bytes, durable: bool = True) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never a mix: temp file, fsync, os.replace.

    `durable=False` skips the fsyncs: still atomic for readers, but a power cut may lose the write (for live views
    that are rewritten often and rebuilt anyway)."""
    tmp, _, _ = _staged(path, data, durable)
    try:
        fault_point("write-before-replace")
        os.replace(tmp, path)
    except BaseException as error:
        _discard(tmp)
        if isinstance(error, OSError):
            raise _naming(error, path) from None
        raise
    if durable:
        _fsync_dir(os.path.dirname(path) or ".")


def replace_if_unchanged(path: str, data: bytes, expected: bytes, expected_ino: int, sync_folder: bool = True) -> bool:
    """Replace `path` with `data` only if it still is the file that was read (inode `expected_ino`, bytes
    `expected`); False, with the file untouched, if someone changed it since.

    The new file's data is always fsync'd before it takes the name, so after a power cut the name holds the old
    file or the new one, never a torn or empty one. `sync_folder=False` leaves out the fsync of the folder after
    the replace, which only makes the replace itself survive a power cut (it may then be undone): for a write that
    can be made again from a record that is itself durable (a claim's file, from its claim record).

    People's editors take no lock, so a plain check-then-replace could throw away a save landing between the check
    and the replace. Where the file system can (Linux renameat2 RENAME_EXCHANGE), the new file is swapped in
    atomically and the file it displaced is compared afterwards: a save made at any moment before the swap is seen
    and swapped back. Elsewhere the check is made just before os.replace, which narrows the window to microseconds.
    """
    tmp, ours, existed = _staged(path, data, durable=True)
    try:
        if not existed:
            return False
        fault_point("write-before-replace")
        swapped = _exchange(tmp, path)
        if swapped is None:  # no RENAME_EXCHANGE here: check, then replace
            if not _holds(path, expected, expected_ino):
                return False
            os.replace(tmp, path)
        elif not _holds(tmp, expected, expected_ino):
            _exchange(tmp, path)  # put their file back
            try:
                if os.stat(tmp).st_ino != ours:  # yet another save landed between the two swaps: it is the newest
                    os.replace(tmp, path)
            except FileNotFoundError:
                pass
            return False
    except OSError as error:
        raise _naming(error, path) from None
    finally:
        _discard(tmp)  # the file the swap displaced, or ours when nothing was replaced
    if sync_folder:
        _fsync_dir(os.path.dirname(path) or ".")
    return True


def create_new(path: str, data: bytes) -> bool:
    """Make the file `path` holding `data`, whole or not at all; False, with nothing written, if `path` exists.

    The data is written and fsync'd beside it first, then hard-linked into place: link(2) fails if the name is
    taken, atomically, so two creators never both win and a reader never sees half a file. Where the file system
    has no hard links, the file is made with O_EXCL and written in place (still one winner; a reader may then see
    it half written for a moment)."""
    tmp, _, _ = _staged(path, data, durable=True)
    try:
        fault_point("create-before-link")
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise _naming(error, path) from None
        return _create_in_place(path, data)
    finally:
        _discard(tmp)
    _fsync_dir(os.path.dirname(path) or ".")
    return True


def _create_in_place(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except FileExistsError:
        return False
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _discard(path)  # ours, made just now: no half-written task is left behind
        raise
    os.close(fd)
    _fsync_dir(os.path.dirname(path) or ".")
    return True


def _staged(path: str, data: bytes, durable: bool) -> tuple[str, int, bool]:
    """(temporary file, its inode, whether `path` exists) for `data` written beside `path` with `path`'s mode,
    fsync'd if `durable` and closed: what both ways of replacing `path` start from. Errors name `path`."""
    try:
        fd, tmp = _temp_file_beside(path)
    except OSError as error:
        raise _naming(error, path) from None
    try:
        try:
            os.fchmod(fd, os.stat(path).st_mode & 0o7777)
            existed = True
        except FileNotFoundError:
            existed = False
        _write_all(fd, data)
        if durable:
            os.fsync(fd)
        ino = os.fstat(fd).st_ino
    except BaseException as error:
        os.close(fd)
        _discard(tmp)
        if isinstance(error, OSError):
            raise _naming(error, path) from None
        raise
    os.close(fd)
    return tmp, ino, existed


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        fault_point("write-partial")
        view = view[written:]


def _holds(path: str, expected: bytes, expected_ino: int) -> bool:
    """Whether `path` is inode `expected_ino` holding exactly `expected`."""
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_ino != expected_ino:
                return False
            return handle.read(len(expected) + 1) == expected
    except FileNotFoundError:
        return False


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: object = None  # None: not looked up yet; False: not available
_get_errno: object = None


def _exchange(a: str, b: str) -> bool | None:
    """Atomically swap the files at `a` and `b` (renameat2 RENAME_EXCHANGE); None where the system cannot."""
    global _renameat2, _get_errno
    if _renameat2 is None:
        _renameat2, _get_errno = _load_renameat2()
    if _renameat2 is False:
        return None
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:  # type: ignore[operator]
        return True
    code = _get_errno()  # type: ignore[operator]
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return None  # this file system cannot exchange (NFS, some overlays)
    raise OSError(code, os.strerror(code), b)


def _load_renameat2() -> tuple[object, object]:
    """(the C library's renameat2, get_errno), or (False, None) where there is none.

    Made from _ctypes, the C module ctypes wraps, as ctypes.CDLL(None, use_errno=True).renameat2 makes it: the
    ctypes package defines a hundred types on import (6 ms of every claim) for the one function used here."""
    try:
        import _ctypes

        class CInt(_ctypes._SimpleCData):  # ctypes.c_int
            _type_ = "i"

        class Function(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = CInt

        class Library:  # what a function pointer is looked up in: a dlopen handle, as CDLL holds it
            _handle = _ctypes.dlopen(None, getattr(os, "RTLD_LOCAL", 0))

        return Function(("renameat2", Library())), _ctypes.get_errno
    except AttributeError:  # no renameat2 in this C library (older glibc, musl, macOS)
        return False, None
    except Exception:  # noqa: BLE001 - another layout of _ctypes: ask ctypes itself
        pass
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).renameat2, ctypes.get_errno
    except (ImportError, OSError, AttributeError):
        return False, None


def _naming(error: OSError, path: str) -> OSError:
    """`error` naming `path` (the file being written) rather than a temporary file beside it."""
    if error.filename == path:
        return error
    return type(error)(error.errno, error.strerror, path)


def _temp_file_beside(path: str) -> tuple[int, str]:
    """A new, exclusively created `.<name>.<random>.tmp` in the same folder (what tempfile.mkstemp does, without
    the 10 ms its import costs a hook)."""
    directory, name = os.path.split(path)
    while True:
        tmp = os.path.join(directory or ".", f".{name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue


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
    atomic_write(path, (lightjson.dumps(value) + "\n").encode())


def read_json(path: str) -> object | None:
    """The JSON value in `path`, or None when the file does not exist."""
    try:
        with open(path, "rb") as handle:
            return lightjson.loads(handle.read())
    except FileNotFoundError:
        return None


class locked:
    """`with locked(path) as got:` holds an exclusive flock on `path` (created, never deleted); `got` is False if
    the lock was busy and not waited for.

    `blocking=False` tries once; `timeout` waits at most that many seconds; otherwise it waits as long as it takes.
    The kernel drops the lock when its holder dies, even by SIGKILL, so a crash never leaves it held.
    Lock files are never unlinked: unlinking after flock lets two processes lock two different inodes.
    """

    def __init__(self, lock_path: str, blocking: bool = True, timeout: float | None = None) -> None:
        self.lock_path = lock_path
        self.blocking = blocking
        self.timeout = timeout
        self._fd = -1

    def __enter__(self) -> bool:
        self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            return _acquire(self._fd, self.blocking, self.timeout)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc_info: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1


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
