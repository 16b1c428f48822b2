"""Index rows of task files, one at a time or, for a big build, across processes (fork, on Linux)."""

from __future__ import annotations

import gc
import os
import stat
import sys

from ..core.errors import TaskFileError
from .task import InvalidEntry, TaskSummary, summarize

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .index import Row

PARALLEL_MIN = 1000  # fewer files are read in-process: on 2 CPUs, children pay from ~500 files (bench/parse.py)
CHUNK = 500  # files a process takes at a time, at most

Item = tuple[str, os.stat_result, bool]  # (relpath, stat, is_symlink), as TaskStore._walk yields them
_job: tuple | None = None  # what forked children read: (root, real root, items, chunks, the shared counter)


def inside(path: str, real_root: str) -> bool:
    """Whether `path`, symlinks resolved, lies under the real task root."""
    return os.path.commonpath([os.path.realpath(path), real_root]) == real_root


def read_summary(root: str, real_root: str, rel: str, st: os.stat_result, is_link: bool) -> TaskSummary | InvalidEntry:
    """The index entry of the task file `rel` under `root`: its summary, or what makes it unusable."""
    from . import taskfile

    path = os.path.join(root, rel)
    try:
        if is_link and not inside(path, real_root):
            target = os.path.realpath(path)
            raise TaskFileError(path, f"symlink points outside the task root (to {target}); it is not read")
        if not is_link and not stat.S_ISREG(st.st_mode):
            raise TaskFileError(path, "not a regular file")
        doc = taskfile.read_doc(path, st.st_size)
        return summarize(doc.data, path, rel, os.path.basename(rel)[:-3])
    except TaskFileError as error:
        return InvalidEntry(error=str(error), path=rel, field=error.field)
    except OSError as error:
        return InvalidEntry(error=f"{path}: cannot read: {error.strerror}", path=rel, field=None)


def read_rows(root: str, items: list[Item], workers: int | None = None) -> list[Row]:
    """The index row (index.make_row) of each item's `read_summary`, in order: with `workers` (default:
    `idle_cpus()`) processes, this one and forked children, when there are at least PARALLEL_MIN items; in this
    process alone otherwise, or if no child starts. Each row is made in the process that read its file."""
    root = os.path.abspath(root)
    real_root = os.path.realpath(root)
    workers = idle_cpus() if workers is None else workers
    gc_was_enabled = gc.isenabled()
    gc.disable()  # tens of thousands of small dicts: collection passes would cost a good share of the build
    try:
        if workers > 1 and len(items) >= PARALLEL_MIN and _can_fork():
            try:
                return _parallel(root, real_root, items, workers)
            except (OSError, ImportError) as error:
                print(f"hypervisor: reading task files in one process ({error})", file=sys.stderr)
        return _read_items(root, real_root, items)
    finally:
        if gc_was_enabled:
            gc.enable()


def _read_items(root: str, real_root: str, items: list[Item]) -> list[Row]:
    from .index import make_row

    return [make_row(rel, (st.st_mtime_ns, st.st_size, st.st_ino), read_summary(root, real_root, rel, st, is_link))
            for rel, st, is_link in items]  # fmt: skip


def cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def idle_cpus() -> int:
    """This CPU and the others other work leaves idle (by the 1-minute load average), at least 1.

    Children pay only on a CPU of their own: on 2 busy CPUs (load 1+ besides this process) they cost more than
    they save (bench/parse.py)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(1, min(cpus(), int(cpus() + 1 - load)))


def _can_fork() -> bool:
    import threading

    # A forked child of a threaded process may inherit a lock another thread held; such processes read serially.
    return sys.platform == "linux" and threading.active_count() == 1


def _parallel(root: str, real_root: str, items: list[Item], workers: int) -> list[Row]:
    """This process and `workers` - 1 forked ones take chunks of the items in turn from a shared counter (so a
    process the machine starves takes fewer); a child sends its rows at the end; chunks of a child that died
    are read here."""
    import multiprocessing
    import pickle  # here, not at the top: most calls read a few files in this process (pickle costs 4 ms)

    from . import index, taskfile  # noqa: F401 - imported once here, not in every child

    global _job
    context = multiprocessing.get_context("fork")
    size = max(50, min(CHUNK, len(items) // (workers * 4)))  # a few chunks each, however many items there are
    chunks = [(start, min(start + size, len(items))) for start in range(0, len(items), size)]
    counter = context.Value("q", 0)
    children = []
    _job = (root, real_root, items, chunks, counter)
    try:
        for _ in range(workers - 1):
            reader, writer = context.Pipe(duplex=False)
            child = context.Process(target=_child, args=(writer,), daemon=True)
            try:
                child.start()
            except OSError as error:  # no more processes: the ones started (or this one alone) do it all
                print(f"hypervisor: reading task files in fewer processes ({error})", file=sys.stderr)
                break
            finally:
                writer.close()
            children.append((child, reader))
        done = {index: _read_chunk(index) for index in _taken(counter, len(chunks))}
        for child, reader in children:
            while True:
                try:
                    index, rows = pickle.loads(reader.recv_bytes())
                except (EOFError, OSError):
                    break
                done[index] = rows
            reader.close()
            child.join()
            if child.exitcode:
                print(f"hypervisor: a process reading task files ended early (exit {child.exitcode})", file=sys.stderr)
        results: list[Row] = []
        for index in range(len(chunks)):
            results.extend(done[index] if index in done else _read_chunk(index))
        return results
    finally:
        _job = None
        for child, _ in children:
            if child.is_alive():
                child.kill()
            child.join()


def _taken(counter, count: int):
    """Chunk indices this process takes from the shared counter until there are none left."""
    while True:
        with counter.get_lock():
            index = counter.value
            counter.value = index + 1
        if index >= count:
            return
        yield index


def _read_chunk(index: int) -> list[Row]:
    assert _job is not None
    root, real_root, items, chunks, _ = _job
    start, stop = chunks[index]
    return _read_items(root, real_root, items[start:stop])


def _child(writer) -> None:
    """In a forked child: read the chunks it takes, pickled as each is read, and send them once all are taken (a
    send now would wait for the parent, which reads only when its own chunks are done)."""
    import pickle  # already loaded: the parent imported it before the fork

    assert _job is not None
    counter, count = _job[4], len(_job[3])
    blobs = [pickle.dumps((index, _read_chunk(index)), pickle.HIGHEST_PROTOCOL) for index in _taken(counter, count)]
    for blob in blobs:
        writer.send_bytes(blob)
    writer.close()
