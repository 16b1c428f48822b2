"""The task index: one SQLite row per task file (its stat signature and summary), with the queue order as an index."""

from __future__ import annotations

import os

from ..core import lightjson, rules

try:  # the C module sqlite3 wraps: its package also imports datetime for adapters never used here (3.5 ms a call)
    import _sqlite3 as sqlite3
except ImportError:  # another Python's layout
    import sqlite3  # type: ignore[no-redef]

TYPE_CHECKING = False  # typing and collections.abc cost every claim 4 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

SCHEMA_VERSION = 5  # 4: a summary may say status_missing; 5: a row's lease hint (lease_until)
BUSY_TIMEOUT_MS = 10_000
FETCH_ROWS = 64
FIRST_ROWS = 8  # the first page of the queue order: a claim mostly takes one of its first rows
BULK_ROWS = 5_000  # rows into an empty table from which its indexes are built after the rows, not row by row

_CLAIMABLE = tuple(sorted(rules.CLAIMABLE_STATUSES | {"in_progress"}))
_CLAIMABLE_SQL = "invalid = 0 AND status IN (" + ", ".join(f"'{status}'" for status in _CLAIMABLE) + ")"

_QUEUE_KEY = "priority, no_created, created, id"
_QUEUE_ORDER = f"ORDER BY {_QUEUE_KEY}"


def queue_page_sql(hinted: bool, after: bool) -> str:
    """One page of `TaskIndex.in_queue_order`: the claimable rows in queue order (without those a lease hint
    notes as held, if `hinted`; from just after a row's queue key, if `after`), FETCH_ROWS of them."""
    # A row whose id another valid row holds too is no usable task (a duplicate): left out here, in the query.
    where = (f"{_CLAIMABLE_SQL} AND (SELECT count(*) FROM files AS other WHERE other.id = files.id AND "
             "other.invalid = 0) = 1")  # fmt: skip
    if hinted:
        where += " AND (lease_until IS NULL OR lease_until <= ?)"
    if after:
        # Rows with the same key hold the same id: duplicates, which no claim takes, so none is lost between pages.
        where += f" AND ({_QUEUE_KEY}) > (?, ?, ?, ?)"
    return (f"SELECT {_QUEUE_KEY}, data FROM files INDEXED BY files_in_queue_order WHERE {where} {_QUEUE_ORDER} "
            f"LIMIT {FETCH_ROWS if after else FIRST_ROWS}")  # fmt: skip


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files (
    rel TEXT PRIMARY KEY,
    mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL, ino INTEGER NOT NULL,
    invalid INTEGER NOT NULL,
    id TEXT, stem TEXT NOT NULL, status TEXT,
    priority INTEGER, no_created INTEGER, created TEXT,
    project TEXT, assignee TEXT,
    data TEXT NOT NULL,
    lease_until REAL
);
"""
_INDEXES = {
    "files_by_id": "files (id)",
    "files_by_stem": "files (stem)",
    "files_by_status": "files (status)",
    "files_in_queue_order": f"files (priority, no_created, created, id) WHERE {_CLAIMABLE_SQL}",
}
_SCHEMA += "".join(f"CREATE INDEX IF NOT EXISTS {name} ON {spec};\n" for name, spec in _INDEXES.items())

Signature = tuple[int, int, int]  # (mtime_ns, size, inode) of a task file
Row = tuple  # the values of one `files` row, in column order


def index_path(state: str) -> str:
    """The index of the task root whose state folder is `state`, one per host: inode numbers and mtimes differ
    between hosts that mount one folder, and SQLite's locks are unsafe across network file systems."""
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.uname().nodename) or "host"
    return os.path.join(state, f"index-{host}.sqlite")


def make_row(rel: str, signature: Signature, entry: dict, lease_until: float | None = None) -> Row:
    """The `files` row of a summary or an invalid-file report; `lease_until`: see TaskIndex.note_lease."""
    stem = os.path.basename(rel)[:-3]
    data = lightjson.dumps_compact(entry)
    if "error" in entry:
        return (rel, *signature, 1, None, stem, None, None, None, None, None, None, data, None)
    created = entry["created"]
    return (rel, *signature, 0, entry["id"], stem, entry["status"], entry["priority"], created is None,
            created or "", entry["project"], entry["assignee"], data, lease_until)  # fmt: skip


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
            self._in_transaction(db, lambda: self._make_schema(db))
        return db

    def _make_schema(self, db: sqlite3.Connection) -> None:
        if self._meta(db, "version") == str(SCHEMA_VERSION):
            return  # another process has just made it
        db.execute("DROP TABLE IF EXISTS files")
        db.execute("DROP TABLE IF EXISTS meta")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("INSERT INTO meta VALUES ('version', ?)", (str(SCHEMA_VERSION),))

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
    def _in_transaction(db: sqlite3.Connection, work: Callable[[], None]) -> None:
        """`work()` in one write transaction: committed if it returns, rolled back if it raises."""
        db.execute("BEGIN IMMEDIATE")
        try:
            work()
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
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
        def work() -> None:
            if deleted:
                db.executemany("DELETE FROM files WHERE rel = ?", ((rel,) for rel in deleted))
            if rows:
                bulk = len(rows) >= BULK_ROWS and db.execute("SELECT 1 FROM files LIMIT 1").fetchone() is None
                if bulk:  # a new store's first walk: rows in key order, then each index built once from them
                    rows.sort(key=lambda row: row[0])
                    for name in _INDEXES:
                        db.execute(f"DROP INDEX IF EXISTS {name}")
                db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                if bulk:
                    for name, spec in _INDEXES.items():
                        db.execute(f"CREATE INDEX {name} ON {spec}")
            if walked_at is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('walked_at', ?)", (repr(walked_at),))

        cls._in_transaction(db, work)

    def note_lease(self, rel: str, until: float | None) -> None:
        """Note that the task in `rel` is held by a live claim until at least `until` (time.time()); None: not.

        A hint for a claim's first look (`in_queue_order(hinted_at=...)`), which skips the row until then, so
        the tasks in flight cost a claim nothing. Any change to the file replaces its row and drops the hint; a
        renewal after the hint was noted only makes the row be looked at again (and noted again). The claim record
        stays the truth: a look without hints sees every row."""
        self.apply_update("UPDATE files SET lease_until = ? WHERE rel = ? AND invalid = 0", (until, rel))

    def apply_update(self, sql: str, params: tuple) -> None:
        """One UPDATE statement as its own transaction (a disk that refuses it moves the index into memory)."""
        try:
            self.db.execute(sql, params)
        except sqlite3.Error:
            if self.in_memory:
                raise
            self._to_memory()
            self.db.execute(sql, params)
        self.writes += 1

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
        loads = lightjson.loads_stored
        return [loads(row[0]) for row in self.db.execute(sql, tuple(params))]

    def entries_reusing(self, known: dict[str, dict]) -> tuple[list[dict], dict[str, dict]]:
        """Every decoded entry by path, decoding only the rows whose text `known` (row text -> its entry, from the
        last call) does not hold: after a change to a few files of many, only those are decoded. Also the new map.
        Entries are shared between calls: they are read, never changed."""
        loads = lightjson.loads_stored
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

    def in_queue_order(self, hinted_at: float | None = None) -> Iterator[dict]:
        """Entries of inbox, active and in_progress tasks in queue order (rules.queue_order), read FETCH_ROWS at a
        time so a caller that stops at the first claimable task reads only the rows before it. With `hinted_at` (a
        time.time()), rows noted as held by a live claim at that time (`note_lease`) are left out.

        Each page is a query of its own, read to its end, so no read transaction stays open between pages: a
        caller writes the index between two rows (a claim does), which a transaction still reading an older
        snapshot could not (SQLITE_BUSY_SNAPSHOT)."""
        loads = lightjson.loads_stored
        after: tuple = ()
        while True:
            params = ((hinted_at,) if hinted_at is not None else ()) + after
            rows = self.db.execute(queue_page_sql(hinted_at is not None, bool(after)), params).fetchall()
            for row in rows:
                yield loads(row[4])
            if len(rows) < (FETCH_ROWS if after else FIRST_ROWS):
                return
            after = tuple(rows[-1][:4])

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM files").fetchone()[0]
