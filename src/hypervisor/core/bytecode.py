"""Byte-compiles hypervisor's modules into their __pycache__ as hash-checked .pyc files, the hooks' fast start."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs a hook 4 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Iterable

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # hypervisor/, all its subpackages
# PEP 552 flags: hash-based (bit 0) and checked against the source on every import (bit 1).
CHECKED_HASH_FLAGS = 0b11


def compile_package(quiet: bool = True) -> list[str]:
    """Compile every module of the package whose .pyc is missing, stale or not hash-checked; the .pyc files written.

    Safe to run at any time and from several processes at once; never raises (a folder it cannot write is left
    as it is). `quiet=False` says on stderr what could not be compiled."""
    sources = []
    for folder, subfolders, names in os.walk(PACKAGE):
        subfolders[:] = sorted(name for name in subfolders if name != "__pycache__")
        sources += [os.path.join(folder, name) for name in sorted(names) if name.endswith(".py")]
    return compile_sources([source for source in sources if not is_current(source)], quiet=quiet)


def compile_sources(sources: Iterable[str], quiet: bool = True) -> list[str]:
    """Compile these modules of the package (paths elsewhere are ignored) to hash-checked .pyc files; those written.

    For the hook's last step: the modules the import system just compiled from source. Never raises."""
    written: list[str] = []
    unwritable: set[str] = set()
    for source in dict.fromkeys(sources):  # in order, once each
        try:
            if not os.path.abspath(source).startswith(PACKAGE + os.sep):
                continue
            cfile = _cache_path(source)
            folder = os.path.dirname(cfile)
            if folder in unwritable:
                continue
            problem = _compile(source, cfile)
        except Exception as error:  # noqa: BLE001 - a hook calls this: nothing may escape
            folder, problem = None, f"{type(error).__name__}: {error}"
        if problem is None:
            written.append(cfile)
            continue
        if folder is not None and problem.startswith("cannot write"):
            unwritable.add(folder)  # one refused write per folder: a read-only install costs a hook one system call
        if not quiet:
            sys.stderr.write(f"hypervisor: {source} not compiled: {problem}\n")
    return written


def is_current(source: str) -> bool:
    """Whether `source` has a hash-checked .pyc for this interpreter that matches its current text."""
    from importlib.util import MAGIC_NUMBER, source_hash

    try:
        with open(_cache_path(source), "rb") as handle:
            header = handle.read(16)
        with open(source, "rb") as handle:
            text = handle.read()
    except (OSError, NotImplementedError):
        return False
    return (header[:4] == MAGIC_NUMBER and int.from_bytes(header[4:8], "little") == CHECKED_HASH_FLAGS
            and header[8:16] == source_hash(text))  # fmt: skip


def _cache_path(source: str) -> str:
    """Where the import system looks for the .pyc of `source` (PYTHONPYCACHEPREFIX and -O included)."""
    from importlib.util import cache_from_source

    return cache_from_source(source)


def _compile(source: str, cfile: str) -> str | None:
    """Write the hash-checked .pyc of `source` to `cfile`, atomically; None, or what went wrong.

    py_compile writes through a temporary file of its own; ours, unique per process, comes first, so that a
    refused write is found before any compiling and concurrent compilers never share a temporary name."""
    import py_compile

    folder = os.path.dirname(cfile)
    temporary = f"{cfile}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        os.makedirs(folder, exist_ok=True)
        os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as error:
        return f"cannot write {folder}: {error.strerror or error}"
    try:
        py_compile.compile(source, cfile=temporary, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)  # fmt: skip
        os.replace(temporary, cfile)
    except py_compile.PyCompileError as error:
        return f"does not compile: {' '.join(error.msg.split())}"
    except OSError as error:
        return f"cannot write {cfile}: {error.strerror or error}"
    finally:
        try:
            os.unlink(temporary)
        except OSError:
            pass
    return None


def main() -> int:
    """`python -m hypervisor.core.bytecode`: compile the package now, and say what was written."""
    written = compile_package(quiet=False)
    print(
        f"hypervisor: {len(written)} module(s) of {PACKAGE} compiled to hash-checked .pyc files "
        "(the others already had one)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
