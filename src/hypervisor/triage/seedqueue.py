"""The seed's batch folder: queue.txt, and the locks/ and results/ records of each queue line.

Nothing here claims a task: claims, leases, attempts and dead letters are the task store's (hypervisor.claims.queue).
locks/<key>/owner.json records which store claim a batch worker holds for a line, results/<key>.yaml what became of
the line, results/<key>.error.yaml its failed attempts, results/processed.log one line per result.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import sys

import yaml

from ..core import fsutil
from ..core.errors import HypervisorError, InvalidTaskId
from ..core.rules import check_task_id
from ..core.timeutil import iso, now

FINAL = ("ok", "closed", "dead_letter")


def item_key(item: str) -> str:
    """`<sha256(item)[:16]>-<sanitised stem>`: the whole queue line decides the key, so a/t.md and b/t.md differ."""
    digest = hashlib.sha256(item.encode("utf-8")).hexdigest()[:16]
    name = os.path.basename(item.rstrip("/")).removesuffix(".md")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:40] or "item"
    return f"{digest}-{stem}"


def looks_like_path(item: str) -> bool:
    return item.endswith(".md") or "/" in item or os.sep in item


def load_record(path: str) -> dict | None:
    """The mapping in a record we wrote, or None if absent; a damaged record is reported and treated as absent."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        print(f"warning: {path}: cannot read: {error}", file=sys.stderr)
        return None
    return data if isinstance(data, dict) else None


def write_record(path: str, record: dict) -> None:
    """One results/ record as YAML, written atomically."""
    data = yaml.safe_dump(record, sort_keys=False, allow_unicode=True, width=2**16)
    fsutil.atomic_write(path, data.encode("utf-8"))


class BatchFolder:
    """queue.txt, locks/ and results/ of one batch folder."""

    def __init__(self, path: str) -> None:
        self.dir = os.path.abspath(path)
        if not os.path.isdir(self.dir):
            raise HypervisorError(
                f"batch folder {self.dir} does not exist: pass --dir DIR pointing at the folder with queue.txt"
            )
        self.queue_path = os.path.join(self.dir, "queue.txt")
        self.locks = os.path.join(self.dir, "locks")
        self.results = os.path.join(self.dir, "results")

    def ensure_dirs(self) -> None:
        for path in (self.locks, self.results):
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as error:
                raise HypervisorError(f"cannot create {path}: {error.strerror}") from None

    def read_queue(self) -> list[str]:
        """The distinct queue lines in order (blank lines and '#' comments skipped); each is a path or a task id."""
        where = f"queue file {self.queue_path}"
        try:
            with open(self.queue_path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            raise HypervisorError(f"{where} not found: create it with one task path per line") from None
        except UnicodeDecodeError as error:
            raise HypervisorError(f"{where} is not UTF-8 text (bad byte at offset {error.start})") from None
        except OSError as error:
            raise HypervisorError(f"{where}: cannot read: {error.strerror}") from None
        items: dict[str, None] = {}
        for number, raw in enumerate(lines, 1):
            item = raw.strip()
            if not item or item.startswith("#"):
                continue
            if not looks_like_path(item):
                try:
                    check_task_id(item)
                except InvalidTaskId:
                    raise HypervisorError(
                        f"{where} line {number}: {item!r} is neither a task file path (ending in .md or containing "
                        "'/') nor a legal task id"
                    ) from None
            items.setdefault(item)
        return list(items)

    # -- results/ ---------------------------------------------------------------------------------------------------
    def result_path(self, key: str) -> str:
        return os.path.join(self.results, key + ".yaml")

    def error_path(self, key: str) -> str:
        return os.path.join(self.results, key + ".error.yaml")

    def result(self, key: str) -> dict | None:
        return load_record(self.result_path(key))

    def final_status(self, key: str) -> str | None:
        """ok, closed or dead_letter once the line's result is committed; None otherwise."""
        result = self.result(key)
        if result and result.get("status") in FINAL and result.get("committed", True) is True:
            return result["status"]
        return None

    def pending(self, key: str) -> dict | None:
        """The uncommitted ok/closed result a worker that died mid-item left, or None."""
        result = self.result(key)
        if result and result.get("status") in ("ok", "closed") and result.get("committed") is False:
            return result
        return None

    def write_result(self, key: str, record: dict) -> None:
        write_record(self.result_path(key), record)

    def drop_pending(self, key: str) -> None:
        if self.pending(key) is not None:
            os.unlink(self.result_path(key))

    def error_record(self, key: str) -> dict:
        """results/<key>.error.yaml: item, key, attempts, last_error, history (one entry per failed attempt)."""
        saved = load_record(self.error_path(key)) or {}
        attempts, history = saved.get("attempts"), saved.get("history")
        return {
            "item": saved.get("item"),
            "key": key,
            "attempts": attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
            "last_error": saved.get("last_error"),
            "history": history if isinstance(history, list) else [],
        }

    def note_error(self, key: str, item: str | None, attempt: int, worker: str | None, message: str) -> dict:
        """Add one failed attempt to the line's error record (the caller holds the line's flock); returns it."""
        record = self.error_record(key)
        record.update(item=item or record["item"], attempts=max(record["attempts"], attempt), last_error=message)
        record["history"].append({"attempt": attempt, "worker": worker, "at": iso(now()), "error": message})
        write_record(self.error_path(key), record)
        return record

    def commit(self, key: str, record: dict) -> None:
        """Mark a result committed (the line is done) and log it in processed.log."""
        record["committed"] = True
        self.write_result(key, record)
        line = {"key": key, "item": record["item"], "status": record["status"], "worker": record["worker"],
                "attempt": record["attempts"], "at": record["finished_at"]}  # fmt: skip
        fsutil.append_line(os.path.join(self.results, "processed.log"), json.dumps(line))

    def stats(self, items: list[str], lock_state) -> dict:
        """queue_total, claimed, stale, completed, errors, dead_letter, remaining; `lock_state(key)` says whether a
        line's lock record holds a live claim ('live'), a lapsed or left-over one ('stale'), or none (None)."""
        out = dict.fromkeys(("queue_total", "claimed", "stale", "completed", "errors", "dead_letter"), 0)
        out["queue_total"] = len(items)
        for item in items:
            key = item_key(item)
            lock = lock_state(key)
            if lock is not None:
                out["claimed" if lock == "live" else "stale"] += 1
            final = self.final_status(key)
            if final in ("ok", "closed"):
                out["completed"] += 1
            elif final == "dead_letter":
                out["dead_letter"] += 1
            elif self.error_record(key)["attempts"] > 0:
                out["errors"] += 1
        out["remaining"] = out["queue_total"] - out["completed"] - out["dead_letter"]
        return out

    # -- locks/ -----------------------------------------------------------------------------------------------------
    def flock_path(self, key: str) -> str:
        """The flock that serialises batch workers on one line (its records, never the task: that is the claim)."""
        return os.path.join(self.locks, key + ".flock")

    def lock_dir(self, key: str) -> str:
        return os.path.join(self.locks, key)

    def owner(self, key: str) -> dict | None:
        try:
            data = fsutil.read_json(os.path.join(self.lock_dir(key), "owner.json"))
        except (ValueError, OSError):
            return None
        return data if isinstance(data, dict) else None

    def write_owner(self, key: str, owner: dict) -> None:
        os.makedirs(self.lock_dir(key), exist_ok=True)
        fsutil.atomic_write_json(os.path.join(self.lock_dir(key), "owner.json"), owner)

    def drop_owner(self, key: str, token: str | None = None) -> None:
        """Remove the line's lock record (only if it still names `token`, when given)."""
        if token is not None and (self.owner(key) or {}).get("token") != token:
            return
        tomb = os.path.join(self.locks, f".stale-{key}-{secrets.token_hex(4)}")
        try:
            os.rename(self.lock_dir(key), tomb)
        except FileNotFoundError:
            return
        shutil.rmtree(tomb, ignore_errors=True)

    def lock_names(self) -> list[str]:
        """Keys that have a lock record."""
        try:
            names = sorted(os.listdir(self.locks))
        except FileNotFoundError:
            return []
        return [n for n in names if not n.startswith(".") and os.path.isdir(os.path.join(self.locks, n))]

    def remove_tombstones(self, dry_run: bool) -> int:
        """Delete `.stale-*` leftovers of removed lock records (a remover that died); returns how many."""
        try:
            names = [n for n in os.listdir(self.locks) if n.startswith(".stale-")]
        except FileNotFoundError:
            return 0
        if not dry_run:
            for name in names:
                shutil.rmtree(os.path.join(self.locks, name), ignore_errors=True)
        return len(names)
