"""Index summaries of task files, one at a time or, for a big build, across processes (fork, on Linux)."""

from __future__ import annotations

import gc
import os
import stat
import sys

from ..core.errors import TaskFileError
from .task import SUMMARY_FIELDS, InvalidEntry, TaskSummary, summarize

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .index import Row

PARALLEL_MIN = 1000  # fewer files are read in-process: on 2 CPUs, children pay from ~500 files (bench/parse.py)
CHUNK = 500  # files a process takes at a time, at most

Item = tuple[str, os.stat_result, bool]  # (relpath, stat, is_symlink), as TaskStore._walk yields them
_job: tuple | None = None  # what forked children read: (root, real root, items, chunks, the shared counter, as_rows)


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


def read_summaries(root: str, items: list[Item], workers: int | None = None) -> list[TaskSummary | InvalidEntry]:
    """`read_summary` of each item, in order: with `workers` (default: `idle_cpus()`) processes, this one and forked
    children, when there are at least PARALLEL_MIN items; in this process alone otherwise, or if no child starts."""
    return _read_all(root, items, workers, as_rows=False)


def read_rows(root: str, items: list[Item], workers: int | None = None) -> list[Row]:
    """The index rows (index.make_row) of the items, in order, read as `read_summaries` reads them: each row is
    made in the process that read its file, so a build's parent does not encode every other process's entries."""
    return _read_all(root, items, workers, as_rows=True)


def _read_all(root: str, items: list[Item], workers: int | None, as_rows: bool) -> list:
    root = os.path.abspath(root)
    real_root = os.path.realpath(root)
    workers = idle_cpus() if workers is None else workers
    gc_was_enabled = gc.isenabled()
    gc.disable()  # tens of thousands of small dicts: collection passes would cost a good share of the build
    try:
        if workers > 1 and len(items) >= PARALLEL_MIN and _can_fork():
            try:
                return _parallel(root, real_root, items, workers, as_rows)
            except (OSError, ImportError) as error:
                print(f"hypervisor: reading task files in one process ({error})", file=sys.stderr)
        return _read_items(root, real_root, items, as_rows)
    finally:
        if gc_was_enabled:
            gc.enable()


def _read_items(root: str, real_root: str, items: list[Item], as_rows: bool) -> list:
    if not as_rows:
        return [read_summary(root, real_root, rel, st, is_link) for rel, st, is_link in items]
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


def _parallel(root: str, real_root: str, items: list[Item], workers: int, as_rows: bool) -> list:
    """This process and `workers` - 1 forked ones take chunks of the items in turn from a shared counter (so a
    process the machine starves takes fewer); a child sends its entries at the end; chunks of a child that died
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
    _job = (root, real_root, items, chunks, counter, as_rows)
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
                    index, packed = pickle.loads(reader.recv_bytes())
                except (EOFError, OSError):
                    break
                start = chunks[index][0]
                done[index] = packed if as_rows else [_unpack(items[start + offset][0], entry)
                                                      for offset, entry in enumerate(packed)]  # fmt: skip
            reader.close()
            child.join()
            if child.exitcode:
                print(f"hypervisor: a process reading task files ended early (exit {child.exitcode})", file=sys.stderr)
        results: list = []
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


def _read_chunk(index: int) -> list:
    assert _job is not None
    root, real_root, items, chunks, _, as_rows = _job
    start, stop = chunks[index]
    return _read_items(root, real_root, items[start:stop], as_rows)


def _child(writer) -> None:
    """In a forked child: read the chunks it takes, pickled as each is read, and send them once all are taken (a
    send now would wait for the parent, which reads only when its own chunks are done)."""
    import pickle  # already loaded: the parent imported it before the fork

    assert _job is not None
    counter, count, as_rows = _job[4], len(_job[3]), _job[5]
    pack = tuple if as_rows else _pack  # a row is a tuple of plain values already
    blobs = [pickle.dumps((index, [pack(entry) for entry in _read_chunk(index)]), pickle.HIGHEST_PROTOCOL)
             for index in _taken(counter, count)]  # fmt: skip
    for blob in blobs:
        writer.send_bytes(blob)
    writer.close()


def _pack(entry: TaskSummary | InvalidEntry) -> tuple:
    """An entry as a tuple (cheap to pickle): its summary fields in order, or (error, field) for an invalid file."""
    if "error" in entry:
        return (entry["error"], entry["field"])
    return (*[entry[name] for name in SUMMARY_FIELDS], "status_missing" in entry)  # type: ignore[literal-required]


def _unpack(rel: str, packed: tuple) -> TaskSummary | InvalidEntry:
    if len(packed) == 2:
        return InvalidEntry(error=packed[0], path=rel, field=packed[1])
    summary = dict(zip(SUMMARY_FIELDS, packed[:-1], strict=True))
    summary["path"] = rel
    if packed[-1]:
        summary["status_missing"] = True
    return summary  # type: ignore[return-value]
