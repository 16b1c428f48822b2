"""Seed-compatible batch worker: claim queue.txt items with leased lock dirs, triage each task, write a result.

Usage (run in the batch folder, or point --dir at it):
  python scripts/batch_worker.py --batch 50            claim and triage up to 50 items
  python scripts/batch_worker.py --stats [--json]      queue_total, claimed, stale, completed, errors,
                                                       dead_letter, remaining
  python scripts/batch_worker.py --dry-run [--json]    what would be claimed, with the triage verdicts; writes nothing
  python scripts/batch_worker.py --reclaim-stale 10m   remove locks claimed more than 10 min ago, then exit
                                                       (or go on to the batch when --batch is given too)
  Other options: --dir DIR, --tasks DIR, --rules FILE, --lease 30m, --max-attempts 3, --caller NAME.

The batch folder holds queue.txt (one task-file path or task id a line; blank lines and '#' comments are ignored;
relative paths resolve against the batch folder; a bare id is looked up in the hypervisor task store at
--tasks DIR > HYPERVISOR_TASKS > 'tasks:' in the .hypervisor.yaml above the batch folder > ./tasks), locks/ and
results/ (both created when missing).

Exit codes: 0 ok (item errors are recorded in results/, they are not fatal), 1 error (no queue file, bad rules,
missing task root...), 2 usage (bad option or value), 3 nothing to claim (this run processed or failed no item).
"""

# How an item is handled:
# * Its key is `<sha256(item)[:16]>-<sanitised stem>`: the WHOLE item string, so a/task.md and b/task.md differ.
# * Claim: os.mkdir(locks/<key>) (atomic: one winner), then locks/<key>/owner.json (pid, host, caller, item, token,
#   claimed_at, lease_expires_at, attempts), written atomically. A lock whose lease expired (default 30m, --lease)
#   is taken over by exactly one claimer: under the key's flock (locks/<key>.flock) it re-reads owner.json, records
#   the lost attempt in results/<key>.error.yaml, os.renames the dir to locks/.stale-<key>-<random> and mkdirs anew.
#   A lock dir without owner.json (its claimer died at birth) expires at its mtime + the lease.
# * Process: under locks/<key>.flock (after checking owner.json still carries this run's token, so a holder whose
#   lock was taken over writes nothing) and under the task file's lock -- the store's own lock
#   <root>/.hypervisor/locks/<id>.lock when the file lies inside the task store, else
#   locks/file-<sha256(realpath)[:16]>.flock, so two queue lines naming one file are serialised too -- the task is
#   read fresh and triaged (hypervisor.triage: closure by '## Close Reason' or status done, judgment/automatable
#   assignee, [[project]] link). Then, in this order: results/<key>.yaml is written with committed: false, the task
#   file is replaced atomically (only if it changed), results/<key>.yaml is rewritten with committed: true, a line
#   is appended to results/processed.log, and the lock is released. An uncommitted result (a crash mid-way) does
#   not count as done: the item is claimed again once its lease expires and re-triaged (triage is idempotent).
# * Errors (missing or unreadable file, bad YAML, unknown id...) go to results/<key>.error.yaml (attempt history),
#   the lock is released and the attempt counts; the --max-attempts'th failed attempt (default 3; crashed and
#   reclaimed claims count too) dead-letters the item: results/<key>.yaml with status dead_letter and the last error;
#   it is never retried (delete that file and results/<key>.error.yaml to retry it).
# * --batch N counts items processed successfully (ok or closed) by this run; errors and dead letters do not use up
#   the batch, but a run tries each item at most once, so it always ends.
# * A task of a hypervisor store that is under a live `hypervisor claim` is skipped (lock released, no attempt).
# * queue_total counts distinct queue lines (a repeated line is one item); remaining = queue_total - completed -
#   dead_letter, so claimed, crashed and erroring items all still count as remaining.
# * Test hooks: HYPERVISOR_FAULT=batch-locked|batch-result-written|batch-task-written SIGKILLs the process at that
#   point (hypervisor.fsutil.fault_point); HYPERVISOR_PAUSE=batch-processing SIGSTOPs it as it starts on an item.

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import time
from datetime import datetime, timezone

try:
    import hypervisor  # noqa: F401
except ImportError:  # not installed: use the package next to this script, never one from the cwd
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    import hypervisor  # noqa: F401

import yaml

from hypervisor import fsutil, taskfile
from hypervisor.config import load_config
from hypervisor.errors import ConfigError, HypervisorError, InvalidTaskId, TaskNotFound, UsageError
from hypervisor.rules import DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS, check_task_id
from hypervisor.task import summarize
from hypervisor.timeutil import humanize, parse_duration
from hypervisor.triage import TriageRules, apply, decide

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOTHING = 0, 1, 2, 3
FINAL = ("ok", "closed", "dead_letter")
DEFAULT_BATCH = 50


class Fatal(Exception):
    """Stops the whole run: `code` is the exit code, the text names the file and the problem."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class ItemError(Exception):
    """One item cannot be processed; recorded as an attempt."""


class Busy(Exception):
    """The item's task is held elsewhere right now; released without counting an attempt."""


# -- small helpers ------------------------------------------------------------------------------------------------
def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_ts(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def item_key(item: str) -> str:
    """`<sha256(item)[:16]>-<sanitised stem>`: the whole item string decides the key."""
    digest = hashlib.sha256(item.encode("utf-8")).hexdigest()[:16]
    name = os.path.basename(item.rstrip("/"))
    if name.endswith(".md"):
        name = name[:-3]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:40] or "item"
    return f"{digest}-{stem}"


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(value: object) -> bytes:
    text = yaml.dump(value, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=2**16)
    return text.encode("utf-8")


def load_yaml_file(path: str) -> dict | None:
    """The mapping in a YAML file we wrote, or None if absent; a damaged file is reported and treated as absent."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=_Loader)  # noqa: S506 - a safe loader
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        print(f"warning: {path}: cannot read: {error}", file=sys.stderr)
        return None
    return data if isinstance(data, dict) else None


def pause_point(name: str) -> None:
    """Stop this process (SIGSTOP) if HYPERVISOR_PAUSE names this point: how tests freeze a holder mid-claim."""
    if os.environ.get("HYPERVISOR_PAUSE") == name:
        os.kill(os.getpid(), signal.SIGSTOP)


def looks_like_path(item: str) -> bool:
    return item.endswith(".md") or "/" in item or os.sep in item


# -- the batch folder ---------------------------------------------------------------------------------------------
class Batch:
    """A batch folder: queue.txt, locks/, results/, and the settings of this run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dir = os.path.abspath(args.dir or os.getcwd())
        if not os.path.isdir(self.dir):
            raise Fatal(f"batch folder {self.dir} does not exist: pass --dir DIR pointing at the folder with queue.txt")
        self.queue_path = os.path.join(self.dir, "queue.txt")
        self.locks = os.path.join(self.dir, "locks")
        self.results = os.path.join(self.dir, "results")
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.caller = args.caller or f"batch-{self.host}-{self.pid}"
        self.lease = parse_duration(args.lease, "--lease")
        self.max_attempts = args.max_attempts
        self.args = args
        self._config = None
        self._stores: dict[str, object] = {}
        self.scanned: set[str] = set()
        self._rules = None

    # paths of one key
    def lock_dir(self, key: str) -> str:
        return os.path.join(self.locks, key)

    def owner_path(self, key: str) -> str:
        return os.path.join(self.locks, key, "owner.json")

    def flock_path(self, key: str) -> str:
        return os.path.join(self.locks, key + ".flock")

    def result_path(self, key: str) -> str:
        return os.path.join(self.results, key + ".yaml")

    def error_path(self, key: str) -> str:
        return os.path.join(self.results, key + ".error.yaml")

    def ensure_dirs(self) -> None:
        for path in (self.locks, self.results):
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as error:
                raise Fatal(f"cannot create {path}: {error.strerror}") from None

    # settings found lazily
    def config(self):
        if self._config is None:
            try:
                self._config = load_config(start=self.dir)
            except ConfigError as error:
                raise Fatal(str(error)) from None
        return self._config

    def task_root(self) -> str:
        explicit = self.args.tasks or os.environ.get("HYPERVISOR_TASKS")
        if explicit:
            return os.path.abspath(explicit)
        return os.path.abspath(self.config().tasks or "tasks")

    def store(self, root: str | None = None):
        from hypervisor.store import TaskStore

        root = root or self.task_root()
        if root not in self._stores:
            self._stores[root] = TaskStore(root)
        return self._stores[root]

    def store_containing(self, path: str):
        """The task store whose root holds `path`, or None (then the batch's own file lock is used)."""
        root = self.task_root()
        if not os.path.isdir(root):
            return None
        real_root, real = os.path.realpath(root), os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            return None
        return self.store(root)

    def rules(self) -> TriageRules:
        if self._rules is None:
            path = self.args.rules or self.config().triage_rules
            try:
                self._rules = TriageRules.load(path)
            except ConfigError as error:
                raise Fatal(str(error)) from None
        return self._rules

    # the queue
    def read_queue(self) -> list[str]:
        try:
            with open(self.queue_path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            raise Fatal(f"queue file {self.queue_path} not found: create it with one task path per line") from None
        except UnicodeDecodeError as error:
            raise Fatal(f"queue file {self.queue_path} is not UTF-8 text (bad byte at offset {error.start})") from None
        except OSError as error:
            raise Fatal(f"queue file {self.queue_path}: cannot read: {error.strerror}") from None
        items, seen = [], set()
        for number, raw in enumerate(lines, 1):
            item = raw.strip()
            if not item or item.startswith("#"):
                continue
            if not looks_like_path(item):
                try:
                    check_task_id(item)
                except InvalidTaskId:
                    raise Fatal(
                        f"queue file {self.queue_path} line {number}: {item!r} is neither a task file path (ending "
                        "in .md or containing '/') nor a legal task id"
                    ) from None
            if item not in seen:
                seen.add(item)
                items.append(item)
        if any(not looks_like_path(item) for item in items) and not os.path.isdir(self.task_root()):
            first = next(item for item in items if not looks_like_path(item))
            raise Fatal(
                f"queue file {self.queue_path} names task id {first!r} but the task root {self.task_root()} does "
                "not exist: pass --tasks DIR or set HYPERVISOR_TASKS"
            )
        return items

    # -- lock and record state --------------------------------------------------------------------------------
    def read_owner(self, key: str) -> dict | None:
        try:
            data = fsutil.read_json(self.owner_path(key))
        except (ValueError, OSError):
            return None
        return data if isinstance(data, dict) else None

    def lock_expiry(self, key: str) -> tuple[float | None, dict | None]:
        """(when the lock on `key` expires, its owner record); (None, None) when there is no lock."""
        owner = self.read_owner(key)
        expires = parse_ts(owner.get("lease_expires_at")) if owner else None
        if expires is None:
            try:
                expires = os.stat(self.lock_dir(key)).st_mtime + self.lease
            except FileNotFoundError:
                return None, None
        elif not os.path.isdir(self.lock_dir(key)):
            return None, None
        return expires, owner

    def lock_state(self, key: str, at: float) -> str | None:
        expires, _ = self.lock_expiry(key)
        if expires is None:
            return None
        return "live" if expires > at else "stale"

    def result(self, key: str) -> dict | None:
        return load_yaml_file(self.result_path(key))

    def final_status(self, key: str) -> str | None:
        """ok, closed or dead_letter once the item's result is committed; None otherwise."""
        result = self.result(key)
        if result and result.get("status") in FINAL and result.get("committed", True) is True:
            return result["status"]
        return None

    def error_record(self, key: str) -> dict:
        """results/<key>.error.yaml: item, key, attempts, last_error, history (one entry per failed attempt)."""
        saved = load_yaml_file(self.error_path(key)) or {}
        attempts = saved.get("attempts")
        history = saved.get("history")
        return {
            "item": saved.get("item"),
            "key": key,
            "attempts": attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
            "last_error": saved.get("last_error"),
            "history": history if isinstance(history, list) else [],
        }

    def note_lost_attempt(self, key: str, item: str | None, owner: dict | None, why: str) -> None:
        """Record a claim that never finished (crashed, hung, reclaimed) as a failed attempt; caller holds the flock."""
        record = self.error_record(key)
        attempt = owner.get("attempts") if owner else None
        if not isinstance(attempt, int) or attempt < 1:
            attempt = record["attempts"] + 1
        holder = "an unknown claimer (no owner.json)"
        if owner:
            where = f"pid {owner.get('pid')} on {owner.get('host')}, claimed {owner.get('claimed_at')}"
            holder = f"{owner.get('caller')} ({where})"
        message = f"{why}: attempt {attempt} by {holder} never finished"
        record.update(item=item or record.get("item") or (owner or {}).get("item"), key=key)
        record["attempts"] = max(record["attempts"], attempt)
        record["last_error"] = message
        record["history"].append({"attempt": attempt, "worker": (owner or {}).get("caller"), "at": iso(time.time()),
                                  "error": message})  # fmt: skip
        fsutil.atomic_write(self.error_path(key), dump_yaml(record))

    def remove_lock_dir(self, key: str) -> bool:
        """Rename the lock dir to a unique tombstone (atomic: one renamer wins) and delete it; False if it was gone."""
        tomb = os.path.join(self.locks, f".stale-{key}-{secrets.token_hex(4)}")
        try:
            os.rename(self.lock_dir(key), tomb)
        except FileNotFoundError:
            return False
        shutil.rmtree(tomb, ignore_errors=True)
        return True


# -- claiming -----------------------------------------------------------------------------------------------------
class Claim:
    """This run's hold on one item's lock dir: `token` is in owner.json while the hold lasts."""

    def __init__(self, key: str, item: str, token: str, attempts: int) -> None:
        self.key, self.item, self.token, self.attempts = key, item, token, attempts


def try_claim(batch: Batch, item: str, key: str) -> Claim | None:
    """Take the item's lock (mkdir, or take over an expired one); None if another claimer holds it."""
    try:
        os.mkdir(batch.lock_dir(key))
    except FileExistsError:
        expires, _ = batch.lock_expiry(key)
        if expires is not None and expires > time.time():
            return None
        with fsutil.locked(batch.flock_path(key), blocking=False) as got:
            if not got:
                return None  # another process is taking it over or committing it right now
            expires, owner = batch.lock_expiry(key)  # re-read under the flock: only flock holders remove lock dirs
            if expires is not None:
                if expires > time.time():
                    return None
                if batch.final_status(key) is None:  # (a committed item only missed its release: no attempt lost)
                    ago = humanize(time.time() - expires)
                    batch.note_lost_attempt(key, item, owner, f"lease expired {ago} ago, taken over by {batch.caller}")
                batch.remove_lock_dir(key)
            try:
                os.mkdir(batch.lock_dir(key))
            except FileExistsError:
                return None
    attempts = batch.error_record(key)["attempts"] + 1
    at = time.time()
    claim = Claim(key, item, secrets.token_hex(12), attempts)
    owner = {"pid": batch.pid, "host": batch.host, "caller": batch.caller, "item": item, "key": key,
             "token": claim.token, "claimed_at": iso(at), "lease_expires_at": iso(at + batch.lease),
             "attempts": attempts}  # fmt: skip
    try:
        fsutil.atomic_write_json(batch.owner_path(key), owner)
    except BaseException:
        shutil.rmtree(batch.lock_dir(key), ignore_errors=True)
        raise
    fsutil.fault_point("batch-locked")
    return claim


def owns(batch: Batch, claim: Claim) -> bool:
    owner = batch.read_owner(claim.key)
    return bool(owner) and owner.get("token") == claim.token


def release(batch: Batch, claim: Claim) -> None:
    """Remove owner.json and the lock dir (the caller holds the key's flock and owns the lock)."""
    try:
        os.unlink(batch.owner_path(claim.key))
    except FileNotFoundError:
        pass
    try:
        os.rmdir(batch.lock_dir(claim.key))
    except FileNotFoundError:
        pass
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        batch.remove_lock_dir(claim.key)  # a temp file left by a crashed atomic write


# -- triage of one task -------------------------------------------------------------------------------------------
class Target:
    def __init__(self, path: str, store=None) -> None:
        self.path, self.store = path, store


def resolve(batch: Batch, item: str) -> Target:
    if looks_like_path(item):
        path = os.path.expanduser(item)
        path = os.path.normpath(path if os.path.isabs(path) else os.path.join(batch.dir, path))
        return Target(path, batch.store_containing(path))
    store = batch.store()
    try:  # scan the task root once a run; scan again only when an id is not found
        summary = store.find(item, refresh=store.root not in batch.scanned)
    except TaskNotFound:
        summary = store.find(item, refresh=True)
    batch.scanned.add(store.root)
    return Target(store.path_of(summary), store)


def read_task(batch: Batch, target: Target) -> tuple[str, taskfile.TaskDoc, dict]:
    """(raw text, document, summary) of the task, read fresh."""
    path = target.path
    try:
        raw = taskfile.read_text(path)
    except FileNotFoundError:
        raise ItemError(f"task file {path} not found") from None
    except IsADirectoryError:
        raise ItemError(f"task file {path} is a directory, not a markdown file") from None
    except OSError as error:
        raise ItemError(f"task file {path}: cannot read: {error.strerror}") from None
    doc = taskfile.parse_text(raw, path)
    name = os.path.basename(path)
    stem = name[:-3] if name.endswith(".md") else name
    if target.store is not None:
        rel = os.path.relpath(os.path.realpath(path), target.store.real_root)
        summary = summarize(doc.data, path, rel, stem)
    else:  # outside a store the id is informative only: make the default a legal one
        default = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).replace("..", ".").lstrip("._-") or "task"
        summary = summarize(doc.data, path, path, default[:128])
    return raw, doc, summary


def triage(batch: Batch, doc: taskfile.TaskDoc, summary: dict) -> tuple[object, list[str]]:
    """Decide and apply the verdict to `doc` in memory; (verdict, changes)."""
    verdict = decide(summary, doc, batch.rules())
    changes: list[str] = []
    if verdict.closed:
        if summary["status"] not in ("done", "cancelled"):
            doc.set("status", "done")
            changes.append("status=done")
    else:
        changes = apply(verdict, summary, doc)
        if not summary["assignee"]:
            doc.set("assignee", verdict.assignee)
            changes.insert(0, f"assignee={verdict.assignee}")
    return verdict, changes


def file_lock_path(batch: Batch, target: Target, task_id: str) -> str:
    if target.store is not None:
        target.store.ensure_state()
        return target.store.lock_path(task_id)
    digest = hashlib.sha256(os.path.realpath(target.path).encode("utf-8")).hexdigest()[:16]
    return os.path.join(batch.locks, f"file-{digest}.flock")


def live_store_claim(target: Target, task_id: str) -> str | None:
    """Who holds a live `hypervisor claim` on the task, or None."""
    from hypervisor.taskqueue import TaskQueue

    claim = TaskQueue(target.store).read_claim(task_id)
    if claim is not None and not claim.expired(time.time()):
        return f"task {task_id} is claimed in the task store by {claim.caller} until {iso(claim.lease_expires_at)}"
    return None


def outcome_of(result: dict) -> dict:
    keep = ("item", "key", "task_id", "status", "attempts", "changes", "assignee", "kind", "close_reason", "error")
    return {k: result.get(k) for k in keep}


def process(batch: Batch, claim: Claim) -> dict:
    """Triage one claimed item, write its result, then the task, then release; or record the error."""
    item, key = claim.item, claim.key
    pause_point("batch-processing")
    try:
        target = resolve(batch, item)
        _, _, first = read_task(batch, target)  # find the task id (and fail early) before taking any lock
        lock_path = file_lock_path(batch, target, first["id"])
        with fsutil.locked(batch.flock_path(key)):
            if not owns(batch, claim):
                return lost(claim)
            with fsutil.locked(lock_path):
                raw, doc, summary = read_task(batch, target)
                if summary["id"] != first["id"]:
                    raise ItemError(f"task file {target.path} changed its id to {summary['id']!r} while being locked")
                if target.store is not None:
                    held = live_store_claim(target, summary["id"])
                    if held:
                        raise Busy(held)
                verdict, changes = triage(batch, doc, summary)
                previous = batch.result(key)
                if previous and previous.get("status") in ("ok", "closed") and not changes:
                    changes = list(previous.get("changes") or [])  # re-run after a crash: the task was written
                text = doc.render()
                result = {
                    "item": item, "key": key, "task_id": summary["id"], "path": target.path,
                    "status": "closed" if verdict.closed else "ok", "committed": False, "changes": changes,
                    "assignee": verdict.assignee, "kind": verdict.kind, "close_reason": verdict.close_reason,
                    "attempts": claim.attempts, "worker": batch.caller, "finished_at": iso(time.time()),
                }  # fmt: skip
                if previous and previous.get("status") in ("ok", "closed"):
                    result["recovered"] = True
                fsutil.atomic_write(batch.result_path(key), dump_yaml(result))
                fsutil.fault_point("batch-result-written")
                if text != raw:
                    try:
                        fsutil.atomic_write(target.path, text.encode("utf-8"))
                    except OSError as error:
                        os.unlink(batch.result_path(key))
                        raise ItemError(f"task file {target.path}: cannot write: {error.strerror}") from None
                fsutil.fault_point("batch-task-written")
                result["committed"] = True
                fsutil.atomic_write(batch.result_path(key), dump_yaml(result))
                line = {"key": key, "item": item, "status": result["status"], "worker": batch.caller,
                        "attempt": claim.attempts, "at": result["finished_at"]}  # fmt: skip
                fsutil.append_line(os.path.join(batch.results, "processed.log"), json.dumps(line))
            release(batch, claim)
        return outcome_of(result)
    except Busy as busy:
        with fsutil.locked(batch.flock_path(key)):
            if owns(batch, claim):
                release(batch, claim)
        return {"item": item, "key": key, "status": "skipped", "attempts": claim.attempts, "error": str(busy)}
    except (ItemError, HypervisorError) as error:
        return fail(batch, claim, str(error))
    except (OSError, UnicodeError, yaml.YAMLError) as error:
        return fail(batch, claim, f"{item}: {type(error).__name__}: {error}")
    except Exception as error:  # noqa: BLE001 - one odd task must not stop the batch or strand its lock
        return fail(batch, claim, f"{item}: unexpected {type(error).__name__}: {error}")


def fail(batch: Batch, claim: Claim, message: str) -> dict:
    """Record a failed attempt, dead-letter the item at --max-attempts, release the lock."""
    key = claim.key
    with fsutil.locked(batch.flock_path(key)):
        if not owns(batch, claim):
            return lost(claim)
        record = batch.error_record(key)
        record.update(item=claim.item, key=key)
        record["attempts"] = max(record["attempts"], claim.attempts)
        record["last_error"] = message
        record["history"].append({"attempt": claim.attempts, "worker": batch.caller, "at": iso(time.time()),
                                  "error": message})  # fmt: skip
        fsutil.atomic_write(batch.error_path(key), dump_yaml(record))
        status = "error"
        if claim.attempts >= batch.max_attempts:
            dead_letter(batch, claim, message)
            status = "dead_letter"
        release(batch, claim)
    return {"item": claim.item, "key": key, "status": status, "attempts": claim.attempts, "error": message}


def dead_letter(batch: Batch, claim: Claim, last_error: str) -> None:
    result = {"item": claim.item, "key": claim.key, "task_id": None, "status": "dead_letter", "committed": True,
              "error": last_error, "attempts": claim.attempts, "max_attempts": batch.max_attempts,
              "worker": batch.caller, "finished_at": iso(time.time()),
              "note": f"gave up after {claim.attempts} attempts; to retry, delete this file and "
                      f"{claim.key}.error.yaml"}  # fmt: skip
    fsutil.atomic_write(batch.result_path(claim.key), dump_yaml(result))


# -- the modes ----------------------------------------------------------------------------------------------------
def claimable(batch: Batch, key: str, at: float) -> bool:
    lock = batch.lock_state(key, at)
    if lock == "live":
        return False
    return lock == "stale" or batch.final_status(key) is None


def lost(claim: Claim) -> dict:
    return {"item": claim.item, "key": claim.key, "status": "lost", "attempts": claim.attempts,
            "error": "claim lost: the lease expired and another worker took the item over; nothing was written"}


def settle_without_processing(batch: Batch, claim: Claim) -> dict | None:
    """A claimed item that needs no triage: dead-letter it (earlier claims crashed or were reclaimed until
    --max-attempts) or, if it is committed already (by another worker between our scan and our mkdir, or by one
    that died between committing and releasing), just release it and return None."""
    key = claim.key
    with fsutil.locked(batch.flock_path(key)):
        if not owns(batch, claim):
            return lost(claim)
        if batch.final_status(key) is not None:
            release(batch, claim)
            return None
        last = batch.error_record(key).get("last_error") or "earlier claims never finished"
        dead_letter(batch, Claim(key, claim.item, claim.token, claim.attempts - 1), last)
        release(batch, claim)
    return {"item": claim.item, "key": key, "status": "dead_letter", "attempts": claim.attempts - 1, "error": last}


def run_batch(batch: Batch, items: list[str], limit: int) -> tuple[dict, int]:
    at = time.time()
    candidates = [(item, item_key(item)) for item in items]
    candidates = [(item, key) for item, key in candidates if claimable(batch, key, at)]
    outcomes: list[dict] = []
    counts = {"ok": 0, "closed": 0, "error": 0, "dead_letter": 0, "skipped": 0, "lost": 0, "busy": 0}
    done = 0
    for item, key in candidates:
        if done >= limit:
            break
        claim = try_claim(batch, item, key)
        if claim is None:
            counts["busy"] += 1
            continue
        if claim.attempts > batch.max_attempts or batch.final_status(key) is not None:
            outcome = settle_without_processing(batch, claim)
            if outcome is None:
                counts["busy"] += 1
                continue
        else:
            try:
                outcome = process(batch, claim)
            except KeyboardInterrupt:  # give the item back at once rather than at lease expiry
                with fsutil.locked(batch.flock_path(key)):
                    if owns(batch, claim):
                        release(batch, claim)
                raise
        counts[outcome["status"]] += 1
        outcomes.append(outcome)
        if outcome["status"] in ("ok", "closed"):
            done += 1
    claimed = sum(counts[k] for k in ("ok", "closed", "error", "dead_letter"))
    report = {"batch_dir": batch.dir, "worker": batch.caller, "dry_run": False, "items": outcomes,
              "counts": counts, "processed": done, "claimed": claimed}  # fmt: skip
    return report, (EXIT_OK if claimed else EXIT_NOTHING)


def run_dry(batch: Batch, items: list[str], limit: int) -> tuple[dict, int]:
    at = time.time()
    outcomes = []
    done = 0
    for item in items:
        if done >= limit:
            break
        key = item_key(item)
        if not claimable(batch, key, at) or batch.final_status(key) is not None:
            continue
        attempts = batch.error_record(key)["attempts"]
        if batch.lock_state(key, at) == "stale":  # a takeover would count the lost attempt first
            owner = batch.read_owner(key) or {}
            attempts = max(attempts, owner["attempts"] if isinstance(owner.get("attempts"), int) else attempts + 1)
        attempts += 1
        outcome = {"item": item, "key": key, "attempts": attempts}
        try:
            target = resolve(batch, item)
            _, doc, summary = read_task(batch, target)
            verdict, changes = triage(batch, doc, summary)
            outcome.update(status="would_close" if verdict.closed else "would_triage", task_id=summary["id"],
                           changes=changes, assignee=verdict.assignee, kind=verdict.kind,
                           close_reason=verdict.close_reason)  # fmt: skip
            done += 1
        except (ItemError, HypervisorError, OSError, UnicodeError, yaml.YAMLError) as error:
            dead = attempts >= batch.max_attempts
            outcome.update(status="would_dead_letter" if dead else "would_error", error=str(error))
        outcomes.append(outcome)
    report = {"batch_dir": batch.dir, "worker": batch.caller, "dry_run": True, "items": outcomes,
              "counts": {"would_claim": len(outcomes)}}  # fmt: skip
    return report, (EXIT_OK if outcomes else EXIT_NOTHING)


def stats(batch: Batch, items: list[str]) -> dict:
    at = time.time()
    out = {"queue_total": len(items), "claimed": 0, "stale": 0, "completed": 0, "errors": 0, "dead_letter": 0}
    for item in items:
        key = item_key(item)
        lock = batch.lock_state(key, at)
        if lock == "live":
            out["claimed"] += 1
        elif lock == "stale":
            out["stale"] += 1
        final = batch.final_status(key)
        if final in ("ok", "closed"):
            out["completed"] += 1
        elif final == "dead_letter":
            out["dead_letter"] += 1
        elif batch.error_record(key)["attempts"] > 0:
            out["errors"] += 1
    out["remaining"] = out["queue_total"] - out["completed"] - out["dead_letter"]
    return out


def reclaim_stale(batch: Batch, age: float, dry_run: bool) -> dict:
    """Remove locks claimed more than `age` seconds ago (and leftover tombstones); counts each as a lost attempt."""
    reclaimed, tombstones = [], 0
    try:
        names = sorted(os.listdir(batch.locks))
    except FileNotFoundError:
        names = []
    for name in names:
        full = os.path.join(batch.locks, name)
        if name.startswith(".stale-"):
            if not dry_run:
                shutil.rmtree(full, ignore_errors=True)
            tombstones += 1
            continue
        if name.startswith(".") or not os.path.isdir(full):
            continue

        def claimed_at() -> tuple[float | None, dict | None]:
            owner = batch.read_owner(name)
            when = parse_ts(owner.get("claimed_at")) if owner else None
            if when is None:
                try:
                    when = os.stat(full).st_mtime
                except FileNotFoundError:
                    return None, None
            return when, owner

        when, owner = claimed_at()
        if when is None or time.time() - when < age:
            continue
        entry = {"key": name, "item": (owner or {}).get("item"), "caller": (owner or {}).get("caller"),
                 "claimed_at": iso(when)}  # fmt: skip
        if dry_run:
            reclaimed.append(entry)
            continue
        with fsutil.locked(batch.flock_path(name), blocking=False) as got:
            if not got:
                continue
            when, owner = claimed_at()
            if when is None or time.time() - when < age:
                continue
            if batch.final_status(name) is None:
                item = (owner or {}).get("item") or (batch.result(name) or {}).get("item")
                why = f"lock reclaimed by --reclaim-stale {batch.args.reclaim_stale}"
                batch.note_lost_attempt(name, item, owner, why)
            if batch.remove_lock_dir(name):
                reclaimed.append(entry)
    return {"reclaimed": len(reclaimed), "locks": reclaimed, "tombstones_removed": tombstones, "dry_run": dry_run}


# -- the command line ---------------------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="batch_worker.py",
        description="Claim items of queue.txt with leased lock dirs, triage each task file, write results/.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 nothing to claim.",
    )
    p.add_argument("--batch", type=positive_int, metavar="N",
                   help=f"process up to N items successfully (ok or closed); default {DEFAULT_BATCH}")  # fmt: skip
    p.add_argument("--dir", metavar="DIR", help="the batch folder holding queue.txt (default: the current folder)")
    p.add_argument("--tasks", metavar="DIR", help="hypervisor task root for bare task ids (default: HYPERVISOR_TASKS)")
    p.add_argument("--rules", metavar="FILE", help="triage rules YAML (default: the package's triage_rules.yaml)")
    p.add_argument("--lease", default=f"{DEFAULT_LEASE_SECONDS // 60}m", metavar="DURATION",
                   help="how long a claim stays valid, e.g. 90s, 30m (default 30m)")  # fmt: skip
    p.add_argument("--max-attempts", type=positive_int, default=DEFAULT_MAX_ATTEMPTS, metavar="N",
                   help=f"failed attempts before dead-lettering an item (default {DEFAULT_MAX_ATTEMPTS})")  # fmt: skip
    p.add_argument("--caller", metavar="NAME", help="worker name in locks and results (default batch-<host>-<pid>)")
    p.add_argument("--stats", action="store_true", help="print queue_total, claimed, completed, errors, remaining")
    p.add_argument("--dry-run", action="store_true", help="show what would be claimed and the verdicts; write nothing")
    p.add_argument("--reclaim-stale", metavar="AGE", help="remove locks claimed longer than AGE ago (e.g. 10m)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return p


def emit(args: argparse.Namespace, report: dict, text: str) -> None:
    if args.json:
        print(json.dumps(report, indent=1))
    elif text:
        print(text)


def describe(outcome: dict) -> str:
    status = outcome["status"]
    if status in ("ok", "would_triage"):
        detail = ", ".join(outcome.get("changes") or []) or "no change"
        detail += f" ({outcome.get('kind')}, assignee {outcome.get('assignee')})"
    elif status in ("closed", "would_close"):
        detail = f"closed: {outcome.get('close_reason')}" + (
            f" [{', '.join(outcome['changes'])}]" if outcome.get("changes") else ""
        )
    else:
        detail = outcome.get("error") or ""
    return f"{status:<18} {outcome['item']}  attempt {outcome.get('attempts')}: {detail}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _main(args)
    except UsageError as error:
        print(f"batch_worker.py: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Fatal as error:
        print(f"batch_worker.py: error: {error}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(error), "exit_code": error.code}))
        return error.code
    except HypervisorError as error:
        print(f"batch_worker.py: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("batch_worker.py: interrupted; the item in hand was released", file=sys.stderr)
        return EXIT_ERROR


def _main(args: argparse.Namespace) -> int:
    if args.stats and (args.batch is not None or args.dry_run):
        raise UsageError("--stats cannot be combined with --batch or --dry-run")
    reclaim_age = parse_duration(args.reclaim_stale, "--reclaim-stale") if args.reclaim_stale else None
    batch = Batch(args)
    items = batch.read_queue()
    reclaim = None
    if reclaim_age is not None:
        if not args.dry_run:
            batch.ensure_dirs()
        reclaim = reclaim_stale(batch, reclaim_age, args.dry_run)
        if args.batch is None and not args.stats:
            verb = "would reclaim" if args.dry_run else "reclaimed"
            lines = [f"{verb} {reclaim['reclaimed']} stale lock(s)"]
            for e in reclaim["locks"]:
                lines.append(f"  {e['key']}  {e['item']}  claimed {e['claimed_at']} by {e['caller']}")
            emit(args, reclaim, "\n".join(lines))
            return EXIT_OK
    if args.stats:
        report = stats(batch, items)
        text = "\n".join(f"{k}: {v}" for k, v in report.items())
        if reclaim is not None:
            report = dict(report, reclaim=reclaim)
        emit(args, report, text)
        return EXIT_OK
    limit = args.batch or DEFAULT_BATCH
    batch.rules()  # a bad rules file stops the run before anything is claimed
    if args.dry_run:
        report, code = run_dry(batch, items, limit)
    else:
        batch.ensure_dirs()
        report, code = run_batch(batch, items, limit)
    if reclaim is not None:
        report["reclaim"] = reclaim
    lines = [describe(outcome) for outcome in report["items"]]
    if code == EXIT_NOTHING:
        s = stats(batch, items)
        lines.append(
            f"nothing to claim in {batch.queue_path}: {s['queue_total']} items, {s['completed']} completed, "
            f"{s['dead_letter']} dead-lettered, {s['claimed']} claimed by live workers"
        )
    elif args.dry_run:
        lines.append(f"dry run: would claim {len(report['items'])} item(s); nothing was written")
    else:
        c = report["counts"]
        lines.append(
            f"{batch.caller}: {report['processed']} processed ({c['ok']} ok, {c['closed']} closed), {c['error']} "
            f"error(s), {c['dead_letter']} dead-lettered, {c['skipped']} skipped, {c['busy']} busy"
        )
    emit(args, report, "\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main())
