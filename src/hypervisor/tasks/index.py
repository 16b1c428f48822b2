"""The task index: one SQLite row per task file (its stat signature and summary), with the queue order as an index."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator

from ..core import rules

SCHEMA_VERSION = 4  # 4: a summary may say status_missing
BUSY_TIMEOUT_MS = 10_000
FETCH_ROWS = 64

_CLAIMABLE = tuple(sorted(rules.CLAIMABLE_STATUSES | {"in_progress"}))
_CLAIMABLE_SQL = "invalid = 0 AND status IN (" + ", ".join(f"'{status}'" for status in _CLAIMABLE) + ")"

_QUEUE_ORDER = "ORDER BY priority, no_created, created, id"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files (
    rel TEXT PRIMARY KEY,
    mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL, ino INTEGER NOT NULL,
    invalid INTEGER NOT NULL,
    id TEXT, stem TEXT NOT NULL, status TEXT,
    priority INTEGER, no_created INTEGER, created TEXT,
    project TEXT, assignee TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_id ON files (id);
CREATE INDEX IF NOT EXISTS files_by_stem ON files (stem);
CREATE INDEX IF NOT EXISTS files_by_status ON files (status);
CREATE INDEX IF NOT EXISTS files_in_queue_order ON files (priority, no_created, created, id) WHERE {_CLAIMABLE_SQL};
"""

Signature = tuple[int, int, int]  # (mtime_ns, size, inode) of a task file
Row = tuple  # the values of one `files` row, in column order


def index_path(state: str) -> str:
    """The index of the task root whose state folder is `state`, one per host: inode numbers and mtimes differ
    between hosts that mount one folder, and SQLite's locks are unsafe across network file systems."""
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.uname().nodename) or "host"
    return os.path.join(state, f"index-{host}.sqlite")


def make_row(rel: str, signature: Signature, entry: dict) -> Row:
    """The `files` row of a summary or an invalid-file report."""
    stem = os.path.basename(rel)[:-3]
    data = json.dumps(entry, separators=(",", ":"), ensure_ascii=False)
    if "error" in entry:
        return (rel, *signature, 1, None, stem, None, None, None, None, None, None, data)
    created = entry["created"]
    return (rel, *signature, 0, entry["id"], stem, entry["status"], entry["priority"], created is None,
            created or "", entry["project"], entry["assignee"], data)  # fmt: skip


class TaskIndex:
    """The index file of one task root. A cache: any file it cannot open, read or write is replaced by a fresh one,
    in memory when the disk cannot take it, and every command still works from the task files themselves."""

    def __init__(self, state: str, in_memory: bool = False) -> None:
        self.path = index_path(state)
        self.state = state
        self._db: sqlite3.Connection | None = None
        self.in_memory = in_memory
        self.writes = 0  # commits by this process, with PRAGMA data_version (others' commits) a cache key

    # -- the connection -----------------------------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._open()
        return self._db

    def _open(self) -> sqlite3.Connection:
        if not self.in_memory and os.path.isdir(self.state):
            for attempt in (1, 2):
                try:
                    return self._prepare(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                                         isolation_level=None, check_same_thread=False))  # fmt: skip
                except sqlite3.OperationalError:
                    break  # locked for long, or a disk that cannot take it: never remove what others may use
                except sqlite3.DatabaseError:  # not a database, or a damaged one: start again
                    if attempt == 2 or not self._remove():
                        break
        self.in_memory = True
        return self._prepare(sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False))

    def _prepare(self, db: sqlite3.Connection) -> sqlite3.Connection:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # a cache: a power cut may lose its last commits, never corrupt it
        if self._meta(db, "version") != str(SCHEMA_VERSION):
            with self._writing(db):
                if self._meta(db, "version") != str(SCHEMA_VERSION):  # another process may have just made it
                    db.execute("DROP TABLE IF EXISTS files")
                    db.execute("DROP TABLE IF EXISTS meta")
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute("INSERT INTO meta VALUES ('version', ?)", (str(SCHEMA_VERSION),))
        return db

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str) -> str | None:
        try:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:
            return None  # no table yet
        return row[0] if row else None

    def _remove(self) -> bool:
        """Remove a corrupt index (and its WAL); whether it is gone."""
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(self.path + suffix)
            except FileNotFoundError:
                continue
            except OSError:
                return False
        return True

    @staticmethod
    @contextlib.contextmanager
    def _writing(db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def version(self) -> tuple[int, int]:
        """Changes as far as this process can tell: (others' commits, its own commits)."""
        return self.db.execute("PRAGMA data_version").fetchone()[0], self.writes

    # -- writing ------------------------------------------------------------------------------------------------
    def apply(self, rows: Iterable[Row], deleted: Iterable[str] = (), walked_at: float | None = None) -> None:
        """Insert or replace `rows`, delete the rows of `deleted` paths, and (after a whole walk) record its time;
        one transaction. A disk that refuses the write moves the index into memory for this process."""
        rows = list(rows)
        deleted = list(deleted)
        if not rows and not deleted and walked_at is None:
            return
        try:
            self._apply(self.db, rows, deleted, walked_at)
        except sqlite3.Error:
            if self.in_memory:
                raise
            self._to_memory()
            self._apply(self.db, rows, deleted, walked_at)
        if rows or deleted:  # a walk that changed no row leaves what was read from the index (and cached) valid
            self.writes += 1

    @classmethod
    def _apply(cls, db: sqlite3.Connection, rows: list[Row], deleted: list[str], walked_at: float | None) -> None:
        with cls._writing(db):
            if deleted:
                db.executemany("DELETE FROM files WHERE rel = ?", ((rel,) for rel in deleted))
            if rows:
                db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            if walked_at is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('walked_at', ?)", (repr(walked_at),))

    def _to_memory(self) -> None:
        """Carry on in memory from what the file holds (or from nothing, if it cannot even be read)."""
        memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        try:
            self.db.backup(memory)
        except sqlite3.Error:
            memory.close()
            memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.close()
        self.in_memory = True
        self._db = self._prepare(memory)

    # -- reading ------------------------------------------------------------------------------------------------
    def walked_at(self) -> float | None:
        """When some process last finished walking the whole root (time.time()), if one has."""
        value = self._meta(self.db, "walked_at")
        return float(value) if value else None

    def signatures(self) -> dict[str, Signature]:
        """The stat signature of every indexed file, by path relative to the root."""
        return {row[0]: row[1:] for row in self.db.execute("SELECT rel, mtime_ns, size, ino FROM files")}

    def signature(self, rel: str) -> Signature | None:
        return self.db.execute("SELECT mtime_ns, size, ino FROM files WHERE rel = ?", (rel,)).fetchone()

    def entries(self, where: str = "", params: Iterable[object] = (), order: str = "rel") -> list[dict]:
        """The decoded entries (summaries and invalid-file reports) of the rows matching `where`, by `order`."""
        sql = "SELECT data FROM files" + (f" WHERE {where}" if where else "") + f" ORDER BY {order}"
        loads = json.loads
        return [loads(row[0]) for row in self.db.execute(sql, tuple(params))]

    def entries_reusing(self, known: dict[str, dict]) -> tuple[list[dict], dict[str, dict]]:
        """Every decoded entry by path, decoding only the rows whose text `known` (row text -> its entry, from the
        last call) does not hold: after a change to a few files of many, only those are decoded. Also the new map.
        Entries are shared between calls: they are read, never changed."""
        loads = json.loads
        fresh: dict[str, dict] = {}
        for (data,) in self.db.execute("SELECT data FROM files ORDER BY rel"):
            entry = known.get(data)
            fresh[data] = loads(data) if entry is None else entry
        return list(fresh.values()), fresh

    def with_id(self, task_id: str) -> list[dict]:
        """The valid entries holding `task_id` (more than one: duplicates)."""
        return self.entries("id = ? AND invalid = 0", (task_id,))

    def invalid_named(self, task_id: str) -> list[dict]:
        """Invalid-file reports of files named `<task_id>.md`."""
        return self.entries("stem = ? AND invalid = 1", (task_id,))

    def holder_of(self, name: str) -> str | None:
        """The path (relative) of an indexed file, valid or not, that holds `name` as its id or is named
        `<name>.md`; None if there is none."""
        sql = "SELECT rel FROM files WHERE id = ? OR stem = ? ORDER BY rel LIMIT 1"
        row = self.db.execute(sql, (name, name)).fetchone()
        return None if row is None else row[0]

    def id_count(self, task_id: str) -> int:
        return self.db.execute("SELECT count(*) FROM files WHERE id = ? AND invalid = 0", (task_id,)).fetchone()[0]

    def duplicated_ids(self) -> set[str]:
        """Ids held by more than one valid row."""
        sql = "SELECT id FROM files WHERE invalid = 0 GROUP BY id HAVING count(*) > 1"
        return {row[0] for row in self.db.execute(sql)}

    def statuses(self, task_ids: Iterable[str]) -> dict[str, list[str]]:
        """The statuses indexed for each of `task_ids` (a list: a duplicated id has several)."""
        found: dict[str, list[str]] = {}
        for task_id in set(task_ids):
            for (status,) in self.db.execute("SELECT status FROM files WHERE id = ? AND invalid = 0", (task_id,)):
                found.setdefault(task_id, []).append(status)
        return found

    def in_queue_order(self) -> Iterator[dict]:
        """Entries of inbox, active and in_progress tasks in queue order (rules.queue_order), read a few at a time
        so a caller that stops at the first claimable task reads only the rows before it."""
        cursor = self.db.execute(
            f"SELECT data FROM files INDEXED BY files_in_queue_order WHERE {_CLAIMABLE_SQL} {_QUEUE_ORDER}"
        )
        loads = json.loads
        while True:
            rows = cursor.fetchmany(FETCH_ROWS)
            if not rows:
                return
            for row in rows:
                yield loads(row[0])

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM files").fetchone()[0]
