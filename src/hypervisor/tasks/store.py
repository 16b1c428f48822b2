"""The markdown task store: finds task files under a root, keeps an index of them, and rewrites them safely."""

from __future__ import annotations

import os
import stat
import sys
import time

from ..core import fsutil
from ..core.config import lock_path, state_dir
from ..core.errors import ConcurrentEdit, TaskNotFound, TaskRootMissing
from ..core.rules import check_task_id, queue_order
from .index import TaskIndex, make_row
from .task import InvalidEntry, TaskSummary, summarize

TYPE_CHECKING = False  # typing costs every CLI call 2 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import TypeVar

    from .taskfile import TaskDoc

    T = TypeVar("T")


PROGRESS_STEP = 10_000  # files read between two looks at the clock during a big build
FRESH_FOR = 10.0  # seconds: a claim picks from an index walked this recently (the task it takes is read fresh)
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

    def __init__(self, root: str, read_only: bool = False) -> None:
        """`read_only`: a look that must leave no trace (a dry run): the index is kept in memory, nothing made."""
        self.root = os.path.abspath(root)
        self.read_only = read_only
        self.real_root = os.path.realpath(self.root)
        self.state = state_dir(self.root)
        self._index: TaskIndex | None = None
        self._refreshed_at = float("-inf")
        self._summaries: tuple[tuple[int, int], list[TaskSummary], list[InvalidEntry]] | None = None
        self._duplicated: tuple[tuple[int, int], set[str]] | None = None
        self._decoded: dict[str, dict] = {}  # index row text -> its decoded entry, from the last `summaries`
        self._state_made = False
        self._state_last = os.path.join(self.state, "runs")  # the subfolder ensure_state makes last

    # -- state folder -------------------------------------------------------------------------------------------
    def ensure_state(self) -> str:
        """Create the state folder (ignored by git) and its subfolders; returns its path."""
        if self._state_made and os.path.isdir(self._state_last):
            return self.state  # made before by this store and still there: one stat, not ten, on every claim
        if not os.path.isdir(self.root):
            raise TaskRootMissing(missing_root_advice(self.root))
        for sub in ("", "locks", "claims", "runs"):
            os.makedirs(os.path.join(self.state, sub), exist_ok=True)
        ignore = os.path.join(self.state, ".gitignore")
        if not os.path.exists(ignore):
            fsutil.atomic_write(ignore, b"# hypervisor state: claims, locks, events, index\n*\n")
        self._state_made = True
        return self.state

    def lock_path(self, task_id: str) -> str:
        """The flock file that serialises every change to one task."""
        return lock_path(self.state, task_id)

    def task_lock(self, task_id: str) -> fsutil.locked:
        """`with store.task_lock(id):` holds the task's lock; all writers of a task's file and claim go through it."""
        self.ensure_state()
        return fsutil.locked(self.lock_path(task_id))

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

    def _inside(self, path: str) -> bool:
        return os.path.commonpath([os.path.realpath(path), self.real_root]) == self.real_root

    @property
    def index(self) -> TaskIndex:
        """The index of this root's files (opened on first use, made with the state folder if need be)."""
        if self._index is None:
            if os.path.isdir(self.root) and not self.read_only:
                try:
                    self.ensure_state()
                except OSError:
                    pass  # a folder that cannot take it: the index is kept in memory
            self._index = TaskIndex(self.state, in_memory=self.read_only)
        return self._index

    def refresh(self, max_age: float | None = None) -> int:
        """Bring the index up to date with one walk of the root, re-reading only files whose stat changed; returns
        how many were read.

        With `max_age`, an index that this or any other process brought up to date less than `max_age` seconds ago
        is used as it is: changes made since then are seen by the next walk (see FRESH_FOR).
        """
        if max_age is not None:
            if time.monotonic() - self._refreshed_at < max_age:
                return 0
            walked_at = self.index.walked_at()
            if walked_at is not None and 0 <= time.time() - walked_at < max_age:
                return 0
        started = time.time()
        self._refreshed_at = time.monotonic()
        with _without_gc():
            known = self.index.signatures()
            changed = self._changed(known)
            rows = self._read_rows(changed)
        self.index.apply(rows, known, walked_at=started)
        return len(rows)

    def _changed(self, known: dict) -> list[tuple[str, os.stat_result, bool]]:
        """The files whose stat differs from `known` (popped from it as they are seen: what is left is gone)."""
        changed = []
        # The hot loop of every walk: one stat per file, nothing allocated for an unchanged one.
        for rel, st, is_link in self._walk():
            signature = known.pop(rel, None)
            if (
                signature is None
                or signature[0] != st.st_mtime_ns
                or signature[1] != st.st_size
                or signature[2] != st.st_ino
            ):
                changed.append((rel, st, is_link))
        return changed

    def _read_rows(self, changed: list[tuple[str, os.stat_result, bool]]) -> list:
        """Index rows for the files of `changed`, read (in parallel when there are many); progress on stderr when
        that takes more than a second."""
        from .bulkread import read_rows

        rows: list = []
        with Progress(len(changed), self.root) as progress:
            for start in range(0, len(changed), PROGRESS_STEP):
                step = changed[start : start + PROGRESS_STEP]
                rows.extend(read_rows(self.root, step))
                progress.advance(len(step))
        return rows

    def note_written(self, doc: TaskDoc, lease_until: float | None = None) -> None:
        """Update the index row of a file this process just wrote, so it need not be read again (`lease_until`:
        the lease of the claim it was written for, see TaskIndex.note_lease)."""
        rel = os.path.relpath(doc.path, self.root)
        try:
            st = os.stat(doc.path)
        except OSError:
            return
        summary = summarize(doc.data, doc.path, rel, os.path.basename(rel)[:-3])
        self.index.apply([make_row(rel, (st.st_mtime_ns, st.st_size, st.st_ino), summary, lease_until)])

    def _read_summary(self, rel: str, st: os.stat_result, is_link: bool) -> TaskSummary | InvalidEntry:
        """The index entry of one file: its summary, or the report of why the queue cannot use it."""
        from .bulkread import read_summary

        return read_summary(self.root, self.real_root, rel, st, is_link)

    def summaries(self, refresh: bool = True) -> tuple[list[TaskSummary], list[InvalidEntry]]:
        """(valid task summaries, invalid-file reports) over the whole root; duplicate ids are invalid."""
        if not os.path.isdir(self.root):
            self.ensure_state()  # raises the clear "does not exist" message
        if refresh:
            self.refresh()
        version = self.index.version()
        if self._summaries is not None and self._summaries[0] == version:
            return list(self._summaries[1]), list(self._summaries[2])
        valid: dict[str, TaskSummary] = {}
        invalid: list[InvalidEntry] = []
        duplicates: dict[str, list[str]] = {}
        entries, self._decoded = self.index.entries_reusing(self._decoded)
        for entry in entries:
            if "error" in entry:  # is_invalid, inline: this loop runs over every file
                invalid.append(entry)
                continue
            task_id = entry["id"]
            if task_id in valid or task_id in duplicates:
                duplicates.setdefault(task_id, [valid.pop(task_id)["path"]] if task_id in valid else [])
                duplicates[task_id].append(entry["path"])
                continue
            valid[task_id] = entry
        invalid.extend(self._duplicate_reports(duplicates))
        invalid.sort(key=lambda report: report["path"])
        self._summaries = (version, list(valid.values()), invalid)
        return list(valid.values()), list(invalid)

    def _duplicate_reports(self, duplicates: dict[str, list[str]]) -> list[InvalidEntry]:
        reports = []
        for task_id, rels in duplicates.items():
            for rel in rels:
                others = ", ".join(r for r in rels if r != rel)
                message = (
                    f"{os.path.join(self.root, rel)}: id: {task_id!r} is also the id of {others}; ids must be unique"
                )
                reports.append(InvalidEntry(error=message, path=rel, field="id", duplicate_of=task_id))
        return reports

    def select(self, statuses: Iterable[str] = (), project: str | None = None,
               assignee: str | None = None) -> list[TaskSummary]:  # fmt: skip
        """Valid tasks with one of `statuses` (any, if none), of `project` and `assignee` if given, in queue order,
        from the index as it is (no walk): what a filtered `list` shows, read without decoding the other rows."""
        where, params = ["invalid = 0"], []
        statuses = list(statuses)
        if statuses:
            where.append("status IN (" + ", ".join("?" * len(statuses)) + ")")
            params += statuses
        if project is not None:
            where.append("project = ?")
            params.append(project)
        if assignee is not None:
            where.append("assignee = ?")
            params.append(assignee)
        duplicated = self._duplicated_ids()
        found = self.index.entries(" AND ".join(where), params, order="priority, no_created, created, id")
        return [entry for entry in found if entry["id"] not in duplicated] if duplicated else found

    def invalid(self) -> list[InvalidEntry]:
        """The invalid-file reports (duplicate ids included), by path, from the index as it is."""
        reports = self.index.entries("invalid = 1")
        duplicates: dict[str, list[str]] = {}
        duplicated = sorted(self._duplicated_ids())
        if duplicated:
            marks = ", ".join("?" * len(duplicated))
            for entry in self.index.entries(f"invalid = 0 AND id IN ({marks})", duplicated):
                duplicates.setdefault(entry["id"], []).append(entry["path"])
        reports.extend(self._duplicate_reports(duplicates))
        reports.sort(key=lambda report: report["path"])
        return reports

    def _duplicated_ids(self) -> set[str]:
        """Ids more than one valid file holds (none of those files is a usable task), one pass over the id index."""
        version = self.index.version()
        if self._duplicated is None or self._duplicated[0] != version:
            self._duplicated = (version, self.index.duplicated_ids())
        return self._duplicated[1]

    def in_queue_order(self, hinted_at: float | None = None) -> Iterator[TaskSummary]:
        """Tasks that may be claimable (inbox, active, in_progress) in queue order, from the index as it is, read
        lazily: a claim reads only the rows up to the first task it can take. With `hinted_at`, without the tasks
        noted as held by a live claim at that time (TaskIndex.note_lease)."""
        return self.index.in_queue_order(hinted_at)

    def note_lease(self, summary: TaskSummary, until: float | None) -> None:
        """Note that `summary`'s task is held by a live claim until at least `until`, or (None) that it is not
        (TaskIndex.note_lease)."""
        self.index.note_lease(summary["path"], until)

    def indexed_statuses(self, task_ids: Iterable[str]) -> dict[str, str]:
        """The status of each of `task_ids` the index knows as one valid task (others are missing)."""
        return {task_id: found[0] for task_id, found in self.index.statuses(task_ids).items() if len(found) == 1}

    def fresh_statuses(self, task_ids: Iterable[str]) -> dict[str, str]:
        """`indexed_statuses`, each checked against its file now: what a claim decides dependencies by. A file
        changed since it was indexed is read again; one that is gone, or an id not found, makes one walk first."""
        task_ids = list(task_ids)
        if not task_ids:
            return {}
        found = self._checked_statuses(task_ids)
        if len(found) < len(set(task_ids)):
            self.refresh()
            found = self._checked_statuses(task_ids)
        return found

    def _checked_statuses(self, task_ids: list[str]) -> dict[str, str]:
        found = {}
        for task_id in set(task_ids):
            summary = self.indexed(task_id, check=True)
            if summary is not None:
                found[task_id] = summary["status"]
        return found

    def indexed(self, task_id: str, check: bool = False) -> TaskSummary | None:
        """The index summary of the one valid task holding `task_id`, or None; with `check`, only if its file
        still holds it (a file changed since it was indexed is read again and its row updated)."""
        entries = self.index.with_id(task_id)
        if len(entries) != 1:
            return None
        summary = entries[0]
        if not check:
            return summary
        rel = summary["path"]
        try:
            st = os.stat(os.path.join(self.root, rel), follow_symlinks=False)
        except OSError:
            return None
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self.index.signature(rel) == signature:
            return summary
        entry = self._read_summary(rel, st, stat.S_ISLNK(st.st_mode))
        self.index.apply([make_row(rel, signature, entry)])
        return None if "error" in entry or entry["id"] != task_id else entry

    def by_id(self, refresh: bool = True) -> dict[str, TaskSummary]:
        """Valid task summaries keyed by id."""
        valid, _ = self.summaries(refresh)
        return {summary["id"]: summary for summary in valid}

    def find(self, task_id: str, refresh: bool = True) -> TaskSummary:
        """The summary of one task; TaskNotFound (naming duplicates or the file's error) otherwise.

        With `refresh`, the index is brought up to date within FRESH_FOR and the task's own file checked now; a
        task not found that way makes one full walk before it is said to be missing."""
        check_task_id(task_id)
        if not os.path.isdir(self.root):
            self.ensure_state()  # raises the clear "does not exist" message
        if refresh:
            self.refresh(FRESH_FOR)
        summary = self.indexed(task_id, check=refresh)
        if summary is not None:
            return summary
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
                       first_read: tuple[TaskSummary, TaskDoc, bytes, int] | None = None,
                       lease_until: float | None = None, sync_folder: bool = True) -> T:  # fmt: skip
        """`rewrite` for a caller that holds the task's lock.

        The file of `known` (its index summary) is read fresh, `change(summary, doc)` edits `doc` (field patches and
        appends) and returns what the caller gets back, and the file is replaced only if its rendering differs from
        what was read, and only if the file is still, at the moment of the replace, the one that was read. Editors
        take no lock: if a person saved it meanwhile, it is read again and `change` applied again (so `change` must
        have no effect beyond `doc` and must not mind running twice), up to WRITE_TRIES times, then ConcurrentEdit.
        If `change` raises, nothing is written and the exception propagates; TaskNotFound if the file is gone or
        now holds another id; TaskFileError if the result would not be a readable task file. `first_read` is a
        `read_raw` the caller made under the same lock, used as the first read (its document is edited);
        `lease_until`, for a claim's write, goes into the file's new index row (TaskIndex.note_lease);
        `sync_folder=False`: see fsutil.replace_if_unchanged (only for a change a durable record can make again).
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
            if fsutil.replace_if_unchanged(doc.path, data, raw, ino, sync_folder):
                self.note_written(doc, lease_until)
                return result
        raise ConcurrentEdit(
            f"{self.path_of(known)} changed {WRITE_TRIES} times while hypervisor was writing it (an editor saving it "
            "again and again?); nothing was written: let the file rest a moment and run the command again"
        )


class _without_gc:
    """No collection passes while a walk holds a hundred thousand small objects: they would cost more than it."""

    def __enter__(self) -> None:
        import gc

        self.enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            import gc

            gc.enable()


class Progress:
    """Progress of reading many task files, on stderr, once it has taken more than a second."""

    AFTER = 1.0

    def __init__(self, total: int, root: str) -> None:
        self.total = total
        self.root = root
        self.done = 0
        self.started = time.monotonic()
        self.said_at: float | None = None

    def __enter__(self) -> Progress:
        return self

    def advance(self, count: int) -> None:
        self.done += count
        at = time.monotonic()
        if self.total and at - self.started >= self.AFTER and (self.said_at is None or at - self.said_at >= 1.0):
            self.said_at = at
            self._say(f"indexing {self.root}: {self.done:,} of {self.total:,} task files read")

    def __exit__(self, *exc: object) -> None:
        if self.said_at is not None and exc[0] is None and self.total:
            elapsed = time.monotonic() - self.started
            self._say(f"indexed {self.total:,} task files of {self.root} in {elapsed:.1f} s")

    @staticmethod
    def _say(text: str) -> None:
        try:
            print(f"hypervisor: {text}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass  # stderr is closed: progress is not worth failing the command for


def order_key(summary: TaskSummary) -> tuple:
    """The queue-order sort key of a task summary."""
    return queue_order(summary["priority"], summary["created"], summary["id"])
