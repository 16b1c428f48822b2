"""The board's watcher: polls what the page shows (task folders, claims, events.jsonl, run folders, the journal) and
keeps one built state, numbered by version, that the server hands out and the event stream announces."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ...core.errors import HypervisorError, storage_error
from ...core.timeutil import iso, now
from ...supervisor import runs
from .state import TokenCounter, board_state

if TYPE_CHECKING:
    from ...claims.queue import TaskQueue

POLL_SECONDS = 0.5  # a cheap look (folder and a few file stamps) this often
WALK_SECONDS = 5.0  # a walk of the store this often (a file edited in place changes no folder), rebuilt if it changed
FULL_SECONDS = 30.0  # a rebuild this often whatever the looks say: a lease that expired changes no file


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def fingerprint(root: str, state: str, watched: list[str]) -> tuple:
    """What changes when anything the board shows changes (but an in-place edit of a task file): the mtime of every
    folder under the task root (a task written, added, removed or renamed changes its folder), the claim records,
    the event log, the runs and the latest run's files, the journal, and the running workers' logs (`watched`)."""
    folders = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                folders.append((folder, os.stat(folder).st_mtime_ns))
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
        except OSError:
            folders.append((folder, None))
    journal = []
    try:
        with os.scandir(os.path.join(state, "journal")) as entries:
            journal = sorted((entry.name, entry.stat().st_size) for entry in entries)
    except OSError:
        pass
    run_ids = runs.run_ids(state)
    latest = os.path.join(state, runs.RUNS_DIR, run_ids[-1]) if run_ids else None
    files = [os.path.join(state, "events.jsonl"), os.path.join(state, "claims"), os.path.join(state, runs.RUNS_DIR)]
    if latest:
        files += [os.path.join(latest, runs.STATE_FILE), os.path.join(latest, runs.SUMMARY_FILE)]
    return (tuple(folders), tuple(journal), tuple(run_ids[-1:]), tuple(_stamp(p) for p in files + watched))


class Watcher:
    """The one built state and its version; the store is read on one thread of its own (the index's SQLite)."""

    def __init__(self, queue: TaskQueue, poll: float = POLL_SECONDS, walk: float = WALK_SECONDS,
                 full: float = FULL_SECONDS) -> None:  # fmt: skip
        self.queue = queue
        self.poll = poll
        self.walk = walk
        self.full = full
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="board-reader")
        # versions go on from the start time (ms): a page that outlived a restart of the board sees a new one
        self.version = time.time_ns() // 1_000_000
        self.body = b"{}"
        self.etag = '"0"'
        self.error: str | None = None
        self._digest = ""
        self._print = None
        self._built_at = self._walked_at = float("-inf")
        self._watched: list[str] = []
        self._tokens = TokenCounter()
        self._changed: asyncio.Condition | None = None

    async def read(self, function, *args):
        """Run `function(*args)` on the reader thread (every look at the store goes there)."""
        return await asyncio.get_running_loop().run_in_executor(self.reader, function, *args)

    def _build(self) -> bool:
        """Build the state now; whether what it shows changed (a digest of it, without its build stamps)."""
        started = time.perf_counter()
        try:
            state = board_state(self.queue, self._tokens)
            self.error = None
        except (HypervisorError, OSError) as error:
            self.error = str(storage_error(error) if isinstance(error, OSError) else error)
            state = {"schema": 1, "error": self.error, "tasks": [], "run": None, "runs": []}
        self._built_at = self._walked_at = time.monotonic()
        run = state.get("run") or {}
        logs = os.path.join(self.queue.store.state, runs.RUNS_DIR, run.get("run_id") or "", "logs")
        self._watched = [os.path.join(logs, worker["log_url"].rsplit("/", 1)[1])
                         for worker in run.get("workers", []) if worker.get("log_url")]  # fmt: skip
        shown = json.dumps(state, ensure_ascii=False).encode()
        new = hashlib.sha256(shown).hexdigest()
        changed = new != self._digest
        if changed:
            self._digest = new
            self.version += 1
            self.etag = f'"{self.version}"'
        stamps = {"version": self.version, "generated_at": iso(now()),
                  "build_ms": round((time.perf_counter() - started) * 1000, 1)}  # fmt: skip
        self.body = json.dumps(stamps).encode()[:-1] + b", " + shown[1:]  # one object: the stamps, then the state
        return changed

    def _look(self) -> bool:
        """A cheap look, and a build when it shows a change; a walk of the store or a rebuild when one is due.
        Whether the state changed."""
        store = self.queue.store
        seen = fingerprint(store.root, store.state, self._watched)
        moment = time.monotonic()
        if seen != self._print or moment - self._built_at >= self.full:
            self._print = seen
            return self._build()
        if moment - self._walked_at >= self.walk:
            self._walked_at = moment
            before = store.index.version()
            store.refresh()
            if store.index.version() != before:
                return self._build()
        return False

    async def start(self) -> None:
        self._changed = asyncio.Condition()
        await self.read(self._look)

    async def run(self) -> None:
        """Look every `poll` seconds until cancelled; wake the event streams on each change."""
        while True:
            await asyncio.sleep(self.poll)
            try:
                changed = await self.read(self._look)
            except Exception as error:  # noqa: BLE001 - one bad look must not stop the board's updates
                print(f"hypervisor board: reading the store failed ({type(error).__name__}: {error}); "
                      "trying again", file=sys.stderr, flush=True)  # fmt: skip
                continue
            if changed:
                async with self._changed:
                    self._changed.notify_all()

    async def changed_after(self, version: int, timeout: float) -> int:
        """The version once it is past `version`, or the current one after `timeout` seconds."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.version > version), timeout)
            except asyncio.TimeoutError:
                pass
        return self.version

    def close(self) -> None:
        self.reader.shutdown(wait=False, cancel_futures=True)
