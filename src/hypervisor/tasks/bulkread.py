"""Reading task files into index entries: one file, or many at once for a walk that found them changed."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from ..core.errors import TaskFileError
from .task import InvalidEntry, TaskSummary, summarize

Item = tuple[str, os.stat_result, bool]  # (path relative to the root, its lstat, whether it is a symlink)


def read_entry(root: str, real_root: str, rel: str, st: os.stat_result, is_link: bool) -> TaskSummary | InvalidEntry:
    """The index entry of one file: its summary, or the report of why the queue cannot use it."""
    from . import taskfile

    path = os.path.join(root, rel)
    try:
        if is_link:
            target = os.path.realpath(path)
            if os.path.commonpath([target, real_root]) != real_root:
                raise TaskFileError(path, f"symlink points outside the task root (to {target}); it is not read")
        if not is_link and not stat.S_ISREG(st.st_mode):
            raise TaskFileError(path, "not a regular file")
        doc = taskfile.read_doc(path, st.st_size)
        return summarize(doc.data, path, rel, os.path.basename(rel)[:-3])
    except TaskFileError as error:
        return InvalidEntry(error=str(error), path=rel, field=error.field)
    except OSError as error:
        return InvalidEntry(error=f"{path}: cannot read: {error.strerror}", path=rel, field=None)


def read_entries(root: str, items: list[Item], advance: Callable[[int], None]) -> list[TaskSummary | InvalidEntry]:
    """The entries of `items`, in their order; `advance(n)` is told as they are read."""
    real_root = os.path.realpath(root)
    entries = []
    for number, (rel, st, is_link) in enumerate(items, 1):
        entries.append(read_entry(root, real_root, rel, st, is_link))
        if number % 500 == 0:
            advance(500)
    advance(len(items) % 500)
    return entries
