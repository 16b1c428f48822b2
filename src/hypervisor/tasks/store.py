"""The markdown task store: finds task files under a root, keeps an index of them, and rewrites them safely."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import stat
import time
from collections.abc import Callable, Iterator

from ..core import fsutil
from ..core.config import lock_path, state_dir
from ..core.errors import ConcurrentEdit, TaskFileError, TaskNotFound
from ..core.rules import check_task_id, queue_order
from .task import InvalidEntry, TaskSummary, is_invalid, summarize

TYPE_CHECKING = False  # typing costs every CLI call 2 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from typing import TypeVar

    from .taskfile import TaskDoc

    T = TypeVar("T")


INDEX_VERSION = 1
WRITE_TRIES = 8  # re-reads of a file a person keeps saving before a rewrite gives up


def missing_root_advice(root: str) -> str:
    """What to say when the task root is missing: each way to make one, all of which work."""
    return (
        f"task root {root} does not exist. Make one: run `hypervisor init` in the project folder (creates "
        f"{os.path.basename(root) or root}/ and .hypervisor.yaml), or create the folder {root}, or name another "
        "with `tasks: DIR` in .hypervisor.yaml, HYPERVISOR_TASKS or --tasks DIR"
    )


class TaskStore:
    """Tasks under `root`; state (locks, claims, events, index) under `root/.hypervisor`."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.real_root = os.path.realpath(self.root)
        self.state = state_dir(self.root)
        self._entries: dict[str, list] = {}
        self._loaded = False
        self._dirty = False
        self._generation = 0
        self._refreshed_at = float("-inf")
        self._summaries: tuple[int, list[TaskSummary], list[InvalidEntry]] | None = None
        self._queue_view: tuple[int, list[TaskSummary], dict[str, str]] | None = None

    # -- state folder -------------------------------------------------------------------------------------------
    def ensure_state(self) -> str:
        """Create the state folder (ignored by git) and its subfolders; returns its path."""
        if not os.path.isdir(self.root):
            raise TaskNotFound(missing_root_advice(self.root))
        for sub in ("", "locks", "claims", "runs"):
            os.makedirs(os.path.join(self.state, sub), exist_ok=True)
        ignore = os.path.join(self.state, ".gitignore")
        if not os.path.exists(ignore):
            fsutil.atomic_write(ignore, b"# hypervisor state: claims, locks, events, index\n*\n")
        return self.state

    def lock_path(self, task_id: str) -> str:
        """The flock file that serialises every change to one task."""
        return lock_path(self.state, task_id)

    @contextlib.contextmanager
    def task_lock(self, task_id: str) -> Iterator[None]:
        """Hold the task's lock; all writers of a task's file and claim go through it."""
        self.ensure_state()
        with fsutil.locked(self.lock_path(task_id)):
            yield

    # -- scanning and the index ---------------------------------------------------------------------------------
    def _walk(self) -> Iterator[tuple[str, os.stat_result, bool]]:
        """(relpath, stat, is_symlink) for every *.md under the root, skipping dot-files and dot-folders."""
        stack = [""]
        root = self.root
        S_ISLNK = stat.S_ISLNK
        while stack:
            rel_dir = stack.pop()
            prefix = rel_dir + "/" if rel_dir else ""
            try:
                entries = os.scandir(root + "/" + rel_dir if rel_dir else root)
            except OSError:
                continue
            with entries:
                for entry in entries:
                    name = entry.name
                    if name[0] == ".":
                        continue
                    try:
                        if name.endswith(".md"):
                            st = entry.stat(follow_symlinks=False)
                            if S_ISLNK(st.st_mode):
                                if self._inside(entry.path):
                                    continue  # an alias: the file it points at is read in its own place
                                yield prefix + name, st, True
                            elif not stat.S_ISDIR(st.st_mode):
                                yield prefix + name, st, False
                            else:
                                stack.append(prefix + name)
                        elif entry.is_dir(follow_symlinks=False):
                            stack.append(prefix + name)
                    except OSError:
                        continue

    def _index_path(self) -> str:
        return os.path.join(self.state, "index.json")

    def _load_index(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        gc_was_enabled = gc.isenabled()
        gc.disable()  # thousands of small dicts: collection passes would cost a third of the load
        try:
            with open(self._index_path(), "rb") as handle:
                saved = json.loads(handle.read())
            # Entries are keyed by path relative to the root and checked by (mtime, size, inode), so an index
            # stays valid for a host that mounts the same folder at another path, and a copy re-reads its files.
            if saved.get("version") == INDEX_VERSION:
                self._entries = saved["entries"]
        except (OSError, ValueError, KeyError, AttributeError):
            self._entries = {}
        finally:
            if gc_was_enabled:
                gc.enable()

    def refresh(self, max_age: float | None = None) -> int:
        """Bring the index up to date, re-reading only files whose stat changed; returns how many were read.

        With `max_age`, an index refreshed less than `max_age` seconds ago is used as it is.
        """
        if max_age is not None and time.monotonic() - self._refreshed_at < max_age:
            return 0
        self._refreshed_at = time.monotonic()
        self._load_index()
        entries = self._entries
        seen: dict[str, list] = {}
        reread = 0
        reordered = False
        # The hot loop of every command: one stat per file, no allocation for an unchanged one.
        for rel, st, is_link in self._walk():
            old = entries.get(rel)
            if old is not None:
                signature = old[0]
                if signature[0] == st.st_mtime_ns and signature[1] == st.st_size and signature[2] == st.st_ino:
                    seen[rel] = old
                    continue
            signature = [st.st_mtime_ns, st.st_size, st.st_ino]
            summary = self._read_summary(rel, st, is_link)
            reread += 1
            if old is not None and self._patch_in_place(old, summary):
                old[0] = signature
                seen[rel] = old
                continue
            seen[rel] = [signature, summary]
            reordered = True
        if reread:
            self._dirty = True
        if reordered or len(seen) != len(entries):
            self._generation += 1
        self._entries = seen
        return reread

    def _patch_in_place(self, old: list, summary: TaskSummary | InvalidEntry) -> bool:
        """Update an index entry in place if the task keeps its id and its place in the queue (the usual change:
        a status), so the cached queue view stays valid instead of being rebuilt and re-sorted; False otherwise."""
        view = self._queue_view
        current = old[1]
        if view is None or view[0] != self._generation or is_invalid(current) or is_invalid(summary):
            return False
        if current["id"] != summary["id"] or order_key(current) != order_key(summary):
            return False
        current.clear()
        current.update(summary)
        view[2][summary["id"]] = summary["status"]
        return True

    def note_written(self, doc: TaskDoc) -> None:
        """Update the index entry of a file this process just wrote, so it need not be read again."""
        rel = os.path.relpath(doc.path, self.root)
        try:
            st = os.stat(doc.path)
        except OSError:
            return
        summary = summarize(doc.data, doc.path, rel, os.path.basename(rel)[:-3])
        signature = [st.st_mtime_ns, st.st_size, st.st_ino]
        self._dirty = True
        old = self._entries.get(rel)
        if old is not None and self._patch_in_place(old, summary):
            old[0] = signature
            return
        self._entries[rel] = [signature, summary]
        self._generation += 1

    def _read_summary(self, rel: str, st: os.stat_result, is_link: bool) -> TaskSummary | InvalidEntry:
        from . import taskfile

        path = os.path.join(self.root, rel)
        try:
            if is_link:
                self._check_inside(path)
            if not is_link and not stat.S_ISREG(st.st_mode):
                raise TaskFileError(path, "not a regular file")
            doc = taskfile.read_doc(path, st.st_size)
            return summarize(doc.data, path, rel, os.path.basename(rel)[:-3])
        except TaskFileError as error:
            return InvalidEntry(error=str(error), path=rel, field=error.field)
        except OSError as error:
            return InvalidEntry(error=f"{path}: cannot read: {error.strerror}", path=rel, field=None)

    def _inside(self, path: str) -> bool:
        return os.path.commonpath([os.path.realpath(path), self.real_root]) == self.real_root

    def _check_inside(self, path: str) -> None:
        if not self._inside(path):
            target = os.path.realpath(path)
            raise TaskFileError(path, f"symlink points outside the task root (to {target}); it is not read")

    def save_index(self) -> bool:
        """Persist the index if it changed, so the next process re-reads only what changed since; whether it is
        saved now.

        The index is a cache: a disk that cannot take it (full, read-only, failing) costs the next process a
        rescan, never the command that read the tasks (or the claim it made), so that is not an error."""
        if not self._dirty or not os.path.isdir(self.root):
            return not self._dirty
        payload = {"version": INDEX_VERSION, "root": self.root, "entries": self._entries}
        try:
            self.ensure_state()
            fsutil.atomic_write(self._index_path(), json.dumps(payload, separators=(",", ":")).encode())
        except OSError:
            return False
        self._dirty = False
        return True

    def summaries(self, refresh: bool = True) -> tuple[list[TaskSummary], list[InvalidEntry]]:
        """(valid task summaries, invalid-file reports) over the whole root; duplicate ids are invalid."""
        if not os.path.isdir(self.root):
            self.ensure_state()  # raises the clear "does not exist" message
        if refresh:
            self.refresh()
        if self._summaries is not None and self._summaries[0] == self._generation:
            return list(self._summaries[1]), list(self._summaries[2])
        valid: dict[str, TaskSummary] = {}
        invalid: list[InvalidEntry] = []
        duplicates: dict[str, list[str]] = {}
        for rel, (_, summary) in self._entries.items():
            if "error" in summary:  # is_invalid, inline: this loop runs over every file
                invalid.append(summary)
                continue
            task_id = summary["id"]
            if task_id in valid or task_id in duplicates:
                duplicates.setdefault(task_id, [valid.pop(task_id)["path"]] if task_id in valid else [])
                duplicates[task_id].append(rel)
                continue
            valid[task_id] = summary
        for task_id, rels in duplicates.items():
            for rel in rels:
                others = ", ".join(r for r in rels if r != rel)
                message = (
                    f"{os.path.join(self.root, rel)}: id: {task_id!r} is also the id of {others}; ids must be unique"
                )
                invalid.append(InvalidEntry(error=message, path=rel, field="id", duplicate_of=task_id))
        invalid.sort(key=lambda report: report["path"])
        self._summaries = (self._generation, list(valid.values()), invalid)
        return list(valid.values()), list(invalid)

    def queue_view(self) -> tuple[list[TaskSummary], dict[str, str]]:
        """(valid summaries in queue order, status by id) for the index as it is now; cached until it changes."""
        if self._queue_view is None or self._queue_view[0] != self._generation:
            valid, _ = self.summaries(refresh=False)
            valid.sort(key=order_key)
            self._queue_view = (self._generation, valid, {s["id"]: s["status"] for s in valid})
        return self._queue_view[1], self._queue_view[2]

    def by_id(self, refresh: bool = True) -> dict[str, TaskSummary]:
        """Valid task summaries keyed by id."""
        valid, _ = self.summaries(refresh)
        return {summary["id"]: summary for summary in valid}

    def find(self, task_id: str, refresh: bool = True) -> TaskSummary:
        """The summary of one task; TaskNotFound (naming duplicates or the file's error) otherwise."""
        check_task_id(task_id)
        valid, invalid = self.summaries(refresh)
        for summary in valid:
            if summary["id"] == task_id:
                return summary
        for report in invalid:
            if report.get("duplicate_of") == task_id or os.path.basename(report["path"]) == task_id + ".md":
                raise TaskNotFound(f"task {task_id} cannot be used: {report['error']}")
        raise TaskNotFound(
            f"no task with id {task_id!r} under {self.root}; `hypervisor list` (MCP: list_tasks) shows the ids"
        )

    def path_of(self, summary: TaskSummary) -> str:
        """Absolute path of a task's file."""
        return os.path.join(self.root, summary["path"])

    # -- reading and writing one task ---------------------------------------------------------------------------
    def read(self, known: TaskSummary) -> tuple[TaskSummary, TaskDoc]:
        """(summary, document) of a task read fresh from its file; `known` is its index summary.

        TaskNotFound if the file is gone or now holds another id (moved or renamed since the index saw it).
        """
        summary, doc, _, _ = self.read_raw(known)
        return summary, doc

    def read_raw(self, known: TaskSummary) -> tuple[TaskSummary, TaskDoc, bytes, int]:
        """`read`, plus the bytes the document was parsed from and their inode (what `rewrite_locked` compares)."""
        from . import taskfile

        path = self.path_of(known)
        try:
            doc, raw, ino = taskfile.read_doc_raw(path)
        except FileNotFoundError:
            raise TaskNotFound(f"task {known['id']}: its file {path} is gone; run the command again") from None
        fresh = summarize(doc.data, path, known["path"], os.path.basename(path)[:-3])
        if fresh["id"] != known["id"]:
            raise TaskNotFound(f"task {known['id']}: {path} now holds task {fresh['id']}; run the command again")
        return fresh, doc, raw, ino

    def write(self, doc: TaskDoc) -> None:
        """Write a new document atomically (the caller holds the task's lock); rewrites of an existing task go
        through `rewrite`, which also keeps a person's concurrent save."""
        from . import taskfile

        fsutil.atomic_write(doc.path, taskfile.check_writable(doc.render(), doc.path))
        self.note_written(doc)

    def update(self, task_id: str, change: Callable[[TaskSummary, TaskDoc], T]) -> T:
        """Under the task's lock: re-read the file, apply `change(summary, doc)`, write it if anything changed."""
        return self.rewrite(self.find(task_id), change)

    def rewrite(self, known: TaskSummary, change: Callable[[TaskSummary, TaskDoc], T]) -> T:
        """The one way a task file is changed: lock, read, change, write if changed and if still unchanged.

        Under the task's lock (blocking), see `rewrite_locked`.
        """
        with self.task_lock(known["id"]):
            return self.rewrite_locked(known, change)

    def rewrite_locked(self, known: TaskSummary, change: Callable[[TaskSummary, TaskDoc], T],
                       first_read: tuple[TaskSummary, TaskDoc, bytes, int] | None = None) -> T:  # fmt: skip
        """`rewrite` for a caller that holds the task's lock.

        The file of `known` (its index summary) is read fresh, `change(summary, doc)` edits `doc` (field patches and
        appends) and returns what the caller gets back, and the file is replaced only if its rendering differs from
        what was read, and only if the file is still, at the moment of the replace, the one that was read. Editors
        take no lock: if a person saved it meanwhile, it is read again and `change` applied again (so `change` must
        have no effect beyond `doc` and must not mind running twice), up to WRITE_TRIES times, then ConcurrentEdit.
        If `change` raises, nothing is written and the exception propagates; TaskNotFound if the file is gone or
        now holds another id; TaskFileError if the result would not be a readable task file. `first_read` is a
        `read_raw` the caller made under the same lock, used as the first read (its document is edited).
        """
        from . import taskfile

        for _ in range(WRITE_TRIES):
            summary, doc, raw, ino = first_read or self.read_raw(known)
            first_read = None
            result = change(summary, doc)
            data = taskfile.check_writable(doc.render(), doc.path)
            if data == raw:
                return result
            fsutil.fault_point("task-before-write")
            if fsutil.replace_if_unchanged(doc.path, data, raw, ino):
                self.note_written(doc)
                return result
        raise ConcurrentEdit(
            f"{self.path_of(known)} changed {WRITE_TRIES} times while hypervisor was writing it (an editor saving it "
            "again and again?); nothing was written: let the file rest a moment and run the command again"
        )


def order_key(summary: TaskSummary) -> tuple:
    """The queue-order sort key of a task summary."""
    return queue_order(summary["priority"], summary["created"], summary["id"])
