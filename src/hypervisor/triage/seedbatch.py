"""`scripts/batch_worker.py`'s work: each queue line is claimed in the task store, triaged as `hypervisor triage`
triages, and recorded in the batch folder.

A line resolves to a task of a store: a bare id, or a path, in the task root (--tasks > HYPERVISOR_TASKS > `tasks:`
> ./tasks) when the root holds it, else in the store rooted at the file's own folder. The claim, its lease, the
attempts and the dead letter are the store's (TaskQueue.claim_next/release/complete/dead_letter); the triage is
hypervisor.triage.triage's (triage_edit then triage_settle). Per line, under locks/<key>.flock: claim, record the claim in
locks/<key>/owner.json; then (after the flock is let go and taken again, so a holder frozen in between stops no one)
write results/<key>.yaml uncommitted, write the verdict into the task, complete or release the claim, mark the
result committed, log it, drop owner.json. A line that is no task (missing file, bad frontmatter, unknown id)
cannot be claimed: its failures are counted in results/<key>.error.yaml and --max-attempts of them dead-letter it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket

from ..claims import views
from ..claims.queue import TaskQueue
from ..core import fsutil
from ..core.config import Config
from ..core.errors import ClaimRefused, HypervisorError, TaskFileError, TaskNotFound, disk_failed, storage_error
from ..core.rules import DEAD_LETTER_REASON, FINISHED_STATUSES
from ..core.timeutil import humanize, iso, now, parse_iso
from ..tasks.store import TaskStore
from .seedqueue import BatchFolder, item_key, looks_like_path
from .triage import TriageRules, decide, give_back, triage_doc, triage_edit, triage_settle

RESULT_KEYS = ("item", "key", "task_id", "status", "attempts", "changes", "assignee", "kind", "close_reason", "error")


def _inside(root: str, path: str) -> bool:
    real_root = os.path.realpath(root)
    return os.path.isdir(root) and os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


class SeedBatch:
    """One worker's run over a batch folder."""

    def __init__(self, folder: BatchFolder, config: Config, task_root: str, caller: str | None = None,
                 rules_path: str | None = None, lease: float | None = None,
                 max_attempts: int | None = None) -> None:  # fmt: skip
        self.folder = folder
        self.config = copy.copy(config)
        self.config.lease_seconds = lease or config.lease_seconds
        self.config.max_attempts = max_attempts or config.max_attempts
        self.task_root = task_root
        self.caller = caller or f"batch-{socket.gethostname()}-{os.getpid()}"
        self.rules_path = rules_path or config.triage_rules
        self._rules: TriageRules | None = None
        self._queues: dict[str, TaskQueue] = {}
        self.looking = False  # a dry run: stores opened read-only
        self.stopped: str | None = None  # why a run stopped early: a file on a full, read-only or failing disk

    def rules(self) -> TriageRules:
        if self._rules is None:
            self._rules = TriageRules.load(self.rules_path)
        return self._rules

    def queue(self, root: str) -> TaskQueue:
        if root not in self._queues:
            self._queues[root] = TaskQueue(TaskStore(root, read_only=self.looking), self.config)
        return self._queues[root]

    def check_ids_have_a_root(self, items: list[str]) -> None:
        ids = [item for item in items if not looks_like_path(item)]
        if ids and not os.path.isdir(self.task_root):
            raise HypervisorError(
                f"queue file {self.folder.queue_path} names task id {ids[0]!r} but the task root {self.task_root} "
                "does not exist: pass --tasks DIR or set HYPERVISOR_TASKS"
            )

    # -- which task a line names --------------------------------------------------------------------------------
    def resolve(self, item: str) -> tuple[TaskQueue, dict]:
        """The queue holding the line's task and its summary; a HypervisorError naming the problem otherwise."""
        if not looks_like_path(item):
            queue = self.queue(self.task_root)
            return queue, queue.store.find(item)
        path = os.path.normpath(os.path.join(self.folder.dir, os.path.expanduser(item)))
        if os.path.isdir(path):
            raise TaskFileError(path, "is a directory, not a markdown task file")
        if not os.path.exists(path):
            raise TaskNotFound(f"task file {path} not found")
        queue = self.queue(self.task_root if _inside(self.task_root, path) else os.path.dirname(path))
        rel = os.path.relpath(os.path.realpath(path), queue.store.real_root)
        valid, invalid = queue.store.summaries()
        for summary in valid:
            if summary["path"] == rel:
                return queue, summary
        for report in invalid:
            if report["path"] == rel:
                raise HypervisorError(report["error"])
        raise TaskFileError(path, "is not read as a task (a task file is a *.md file outside dot-folders)")

    def claim_of(self, owner: dict | None) -> tuple[TaskQueue | None, object]:
        """(queue, store claim) a lock record names, if that claim still carries the record's token."""
        try:
            queue = self.queue(owner["tasks"])
            claim = queue.read_claim(owner["task_id"])
        except (KeyError, TypeError, HypervisorError):
            return None, None
        return (queue, claim) if claim is not None and claim.token == owner.get("token") else (queue, None)

    def lock_state(self, key: str) -> str | None:
        """'live' while the line's lock record names a store claim whose lease runs, 'stale' for any other record."""
        owner = self.folder.owner(key)
        if owner is None:
            return "stale" if os.path.isdir(self.folder.lock_dir(key)) else None
        claim = self.claim_of(owner)[1]
        return "live" if claim is not None and not claim.expired(now()) else "stale"

    # -- a run --------------------------------------------------------------------------------------------------
    def run(self, items: list[str], limit: int) -> dict:
        outcomes: list[dict] = []
        counts = dict.fromkeys(("ok", "closed", "error", "dead_letter", "skipped", "lost", "busy"), 0)
        done = 0
        self.stopped = None
        for item in items:
            if done >= limit:
                break
            key = item_key(item)
            if self.folder.final_status(key) is not None:
                continue
            try:
                outcome = self.take(item, key)
            except OSError as error:  # a full, read-only or failing disk: the claim in hand was given back
                if not disk_failed(error):
                    raise
                self.stopped = str(storage_error(error))
                break
            if outcome is None:
                counts["busy"] += 1
                continue
            counts[outcome["status"]] += 1
            outcomes.append(outcome)
            done += outcome["status"] in ("ok", "closed")
            if self.stopped is not None:
                break
        claimed = sum(counts[k] for k in ("ok", "closed", "error", "dead_letter"))
        report = {"batch_dir": self.folder.dir, "worker": self.caller, "dry_run": False, "items": outcomes,
                  "counts": counts, "processed": done, "claimed": claimed}  # fmt: skip
        if self.stopped is not None:
            report["error"] = self.stopped
        return report

    def take(self, item: str, key: str) -> dict | None:
        """Claim the line's task and process it; None when another batch worker has the line."""
        with fsutil.locked(self.folder.flock_path(key), blocking=False) as got:
            if not got or self.folder.final_status(key) is not None:
                return None
            try:
                queue, summary = self.resolve(item)
                if summary["status"] in FINISHED_STATUSES:
                    return self.finished(queue, summary, item, key)
                before = queue.read_claim(summary["id"])
                try:
                    claim = queue.claim_next(self.caller, task_id=summary["id"])
                except ClaimRefused as refusal:
                    return self.refused(queue, summary, item, key, before, str(refusal))
            except (HypervisorError, OSError, UnicodeError) as error:
                if isinstance(error, OSError) and disk_failed(error):
                    raise  # the batch stops; a claim whose file could not be written was dropped again
                return self.unclaimable(item, key, error)
            at = now()
            try:
                self.folder.write_owner(key, {
                    "pid": os.getpid(), "host": socket.gethostname(), "caller": self.caller, "item": item,
                    "key": key, "tasks": queue.store.root, "task_id": claim["id"], "token": claim["claim_token"],
                    "claimed_at": iso(at), "lease_expires_at": claim["lease_expires_at"],
                    "attempts": claim["attempts"],
                })  # fmt: skip
                if claim.get("reclaimed_from"):
                    self.note_takeover(key, item, claim["attempts"] - 1, queue.read_claim(claim["id"]).previous)
            except BaseException:  # the batch folder cannot record the claim: nobody may hold it
                give_back(queue, claim["id"], claim["claim_token"], "the batch folder could not record the claim")
                with contextlib.suppress(OSError):
                    self.folder.drop_owner(key, claim["claim_token"])
                raise
            fsutil.fault_point("batch-locked")
        fsutil.pause_point("batch-processing")
        return self.process(queue, item, key, claim)

    def note_takeover(self, key: str, item: str, attempt: int, previous: dict | None) -> dict:
        previous = previous or {}
        expires = previous.get("lease_expires_at")
        ago = f" {humanize(now() - expires)} ago" if isinstance(expires, (int, float)) else ""
        message = (f"lease expired{ago}, taken over by {self.caller}: attempt {attempt} by "
                   f"{previous.get('caller', 'an earlier claimer')} never finished")  # fmt: skip
        return self.folder.note_error(key, item, attempt, previous.get("caller"), message)

    def process(self, queue: TaskQueue, item: str, key: str, claim: dict) -> dict:
        """Triage a claimed task, result first; a claim lost meanwhile writes nothing."""
        task_id, token, attempts = claim["id"], claim["claim_token"], claim["attempts"]
        record: dict = {}

        def on_verdict(verdict, changes: list[str]) -> None:
            record.update(self.result(item, key, task_id, queue.store.path_of(claim), verdict, changes, attempts))
            self.folder.write_result(key, record)
            fsutil.fault_point("batch-result-written")

        with fsutil.locked(self.folder.flock_path(key)):
            if (self.folder.owner(key) or {}).get("token") != token:
                return self.lost(item, key, attempts, "the lease expired and another worker took the line over")
            try:
                verdict, changes = triage_edit(queue, self.rules(), task_id, token, on_verdict)
                fsutil.fault_point("batch-task-written")
                triage_settle(queue, task_id, token, verdict, changes)
            except ClaimRefused as refusal:
                return self.lost(item, key, attempts, str(refusal))
            except OSError as error:  # an error under the claim like any other; a full or failing disk stops the
                outcome = self.failed(queue, item, key, claim, f"{item}: {storage_error(error)}")  # batch after it
                if disk_failed(error):
                    self.stopped = str(storage_error(error))
                return outcome
            except KeyboardInterrupt:  # give the task back at once rather than at lease expiry
                with contextlib.suppress(HypervisorError):
                    queue.release(task_id, token=token, reason="batch worker interrupted", count_attempt=False)
                    self.folder.drop_owner(key, token)
                raise
            except Exception as error:  # noqa: BLE001 - one odd task must not stop the batch or strand its claim
                return self.failed(queue, item, key, claim, f"{item}: {type(error).__name__}: {error}")
            self.folder.commit(key, record)
            self.folder.drop_owner(key, token)
        return {k: record.get(k) for k in RESULT_KEYS}

    def result(self, item: str, key: str, task_id: str, path: str, verdict, changes: list[str], attempts: int) -> dict:
        """The result record of a verdict; an uncommitted one a crashed worker left lends its changes."""
        record = {"item": item, "key": key, "task_id": task_id, "path": path,
                  "status": "closed" if verdict.closed else "ok", "committed": False, "changes": list(changes),
                  "assignee": verdict.assignee, "kind": verdict.kind, "close_reason": verdict.close_reason,
                  "attempts": attempts, "worker": self.caller, "finished_at": iso(now())}  # fmt: skip
        pending = self.folder.pending(key)
        if pending is not None:
            earlier = [c for c in pending.get("changes") or [] if isinstance(c, str)]
            record["changes"] = earlier + [c for c in changes if c not in earlier]
            if verdict.closed:
                record["close_reason"] = pending.get("close_reason") or record["close_reason"]
            record["recovered"] = True
        return record

    def finished(self, queue: TaskQueue, summary: dict, item: str, key: str) -> dict:
        """A task already done or cancelled: closed, and not touched (`hypervisor triage` leaves it alone too)."""
        _, doc = queue.store.read(summary)
        attempts = self.folder.error_record(key)["attempts"] + 1
        record = self.result(item, key, summary["id"], queue.store.path_of(summary), decide(summary, doc, self.rules()),
                             [], attempts)  # fmt: skip
        record["close_reason"] = record["close_reason"] or f"status is {summary['status']}"
        self.folder.commit(key, record)
        return {k: record.get(k) for k in RESULT_KEYS}

    def refused(self, queue, summary, item: str, key: str, before, text: str) -> dict | None:
        """The store would not give the claim: dead-lettered, held by this line's worker (None), or skipped."""
        _, doc = queue.store.read(summary)
        if doc.data.get("status") == "blocked" and doc.data.get("blocked_reason") == DEAD_LETTER_REASON:
            attempts = doc.data.get("attempts") if isinstance(doc.data.get("attempts"), int) else 0
            if before is not None and before.expired(now()):
                previous = {"caller": before.caller, "lease_expires_at": before.lease_expires_at}
                self.note_takeover(key, item, attempts, previous)
            last = self.folder.error_record(key)["last_error"] or text
            return self.dead_letter(item, key, summary["id"], attempts, last)
        holder = self.claim_of(self.folder.owner(key))[1]
        if holder is not None and not holder.expired(now()):
            return None
        return {"item": item, "key": key, "task_id": summary["id"], "status": "skipped", "attempts": None,
                "error": text}  # fmt: skip

    def unclaimable(self, item: str, key: str, error: BaseException) -> dict:
        """A line that names no readable task: count the failure here; --max-attempts of them dead-letter it."""
        message = str(error) if isinstance(error, HypervisorError) else f"{item}: {type(error).__name__}: {error}"
        attempt = self.folder.error_record(key)["attempts"] + 1
        self.folder.note_error(key, item, attempt, self.caller, message)
        if attempt >= self.config.max_attempts:
            return self.dead_letter(item, key, None, attempt, message)
        return {"item": item, "key": key, "status": "error", "attempts": attempt, "error": message}

    def failed(self, queue: TaskQueue, item: str, key: str, claim: dict, message: str) -> dict:
        """An error under the claim: the store releases it counting the attempt, or dead-letters the task."""
        task_id, token, attempts = claim["id"], claim["claim_token"], claim["attempts"]
        try:
            self.folder.note_error(key, item, attempts, self.caller, message)
            self.folder.drop_pending(key)
        except OSError:  # the error record cannot be written: the claim is given back all the same
            give_back(queue, task_id, token, f"batch error: {message}", count_attempt=True)
            raise
        status = "dead_letter" if attempts >= self.config.max_attempts else "error"
        try:
            if status == "dead_letter":
                queue.dead_letter(task_id, token, message)
            else:
                queue.release(task_id, token=token, reason=f"batch error: {message}")
        except HypervisorError:  # e.g. the file broke: the lease runs out and the next claim counts the attempt
            return {"item": item, "key": key, "status": "error", "attempts": attempts, "error": message}
        except OSError:  # its file cannot be written: the claim is abandoned (rule 2 frees the task)
            with contextlib.suppress(HypervisorError, OSError):
                queue.abandon(task_id, token, f"batch error: {message}")
            return {"item": item, "key": key, "status": "error", "attempts": attempts, "error": message}
        self.folder.drop_owner(key, token)
        if status == "dead_letter":
            return self.dead_letter(item, key, task_id, attempts, message)
        return {"item": item, "key": key, "status": "error", "attempts": attempts, "error": message}

    def dead_letter(self, item: str, key: str, task_id: str | None, attempts: int, last_error: str) -> dict:
        """Record the line as dead-lettered (its task, if any, the store has blocked with reason max_attempts)."""
        retry = f"delete this file and {key}.error.yaml" + (f", and `hypervisor reopen {task_id}`" if task_id else "")
        self.folder.write_result(key, {
            "item": item, "key": key, "task_id": task_id, "status": "dead_letter", "committed": True,
            "error": last_error, "attempts": attempts, "max_attempts": self.config.max_attempts,
            "worker": self.caller, "finished_at": iso(now()),
            "note": f"gave up after {attempts} attempts; to retry, {retry}",
        })  # fmt: skip
        return {"item": item, "key": key, "status": "dead_letter", "attempts": attempts, "error": last_error}

    @staticmethod
    def lost(item: str, key: str, attempts: int, why: str) -> dict:
        return {"item": item, "key": key, "status": "lost", "attempts": attempts,
                "error": f"claim lost: {why}; nothing was written"}  # fmt: skip

    # -- the other modes ----------------------------------------------------------------------------------------
    def dry_run(self, items: list[str], limit: int) -> dict:
        """What `run` would do to each line, from the store's own readiness; writes nothing."""
        self.looking = True
        outcomes, done = [], 0
        for item in items:
            if done >= limit:
                break
            key = item_key(item)
            if self.folder.final_status(key) is not None or self.lock_state(key) == "live":
                continue
            outcome = {"item": item, "key": key, "attempts": self.folder.error_record(key)["attempts"] + 1}
            try:
                queue, summary = self.resolve(item)
                outcome.update(self.preview(queue, summary))
            except (HypervisorError, OSError, UnicodeError) as error:
                dead = outcome["attempts"] >= self.config.max_attempts
                outcome.update(status="would_dead_letter" if dead else "would_error", error=str(error))
            outcomes.append(outcome)
            done += outcome["status"] in ("would_triage", "would_close")
        claims = sum(o["status"] != "would_skip" for o in outcomes)
        return {"batch_dir": self.folder.dir, "worker": self.caller, "dry_run": True, "items": outcomes,
                "counts": {"would_claim": claims, "would_skip": len(outcomes) - claims}}  # fmt: skip

    def preview(self, queue: TaskQueue, summary: dict) -> dict:
        _, doc = queue.store.read(summary)
        view = {"task_id": summary["id"], "tasks": queue.store.root}
        finished = summary["status"] in FINISHED_STATUSES
        plan = views.preflight(queue, ids=[summary["id"]])
        if not finished and not plan["ready"]:
            skipped = plan["skipped"]
            why = [f"is claimed by {e['by']} until {e['until']}" for e in skipped["claimed"]]
            why += [f"waits on unfinished dependencies: {', '.join(e['waiting_on'])}" for e in skipped["blocked_deps"]]
            why += ["is blocked; only inbox or active tasks can be claimed" for _ in skipped["blocked"]]
            why += [f"is {e['status']}; only inbox or active tasks can be claimed" for e in skipped["other"]]
            return dict(view, status="would_skip", error=f"task {summary['id']} {(why or ['is not ready'])[0]}")
        claim = queue.read_claim(summary["id"])
        view["attempts"] = max(summary["attempts"], claim.attempts if claim else 0) + 1
        if not finished and view["attempts"] > self.config.max_attempts:
            return dict(view, status="would_dead_letter", error="max_attempts")
        verdict, changes = triage_doc(summary, doc, self.rules())
        return dict(view, status="would_close" if verdict.closed else "would_triage", changes=changes,
                    assignee=verdict.assignee, kind=verdict.kind, close_reason=verdict.close_reason)  # fmt: skip

    def stats(self, items: list[str]) -> dict:
        return self.folder.stats(items, self.lock_state)

    def reclaim_stale(self, age: float, label: str, dry_run: bool) -> dict:
        """Give back the store claims lock records took more than `age` seconds ago, counting each attempt."""
        reclaimed = []
        for key in self.folder.lock_names():
            entry = self._reclaim_one(key, age, label, dry_run)
            if entry is not None:
                reclaimed.append(entry)
        tombstones = self.folder.remove_tombstones(dry_run)
        return {"reclaimed": len(reclaimed), "locks": reclaimed, "tombstones_removed": tombstones, "dry_run": dry_run}

    def _reclaim_one(self, key: str, age: float, label: str, dry_run: bool) -> dict | None:
        owner, queue, claim, when = self._claimed(key)
        if when is None or now() - when < age:
            return None
        entry = {"key": key, "item": owner.get("item"), "caller": owner.get("caller"), "claimed_at": iso(when)}
        if dry_run:
            return entry
        with fsutil.locked(self.folder.flock_path(key), blocking=False) as got:
            if not got:
                return None  # a worker is on it right now
            owner, queue, claim, when = self._claimed(key)
            if when is None or now() - when < age:
                return None
            if claim is not None:
                try:
                    queue.release(claim.task_id, token=claim.token, reason=f"reclaimed by --reclaim-stale {label}")
                except HypervisorError:
                    pass  # taken over or finished meanwhile: nothing left to give back
                else:
                    where = f"pid {owner.get('pid')} on {owner.get('host')}, claimed {iso(claim.claimed_at)}"
                    why = f"lock reclaimed by --reclaim-stale {label}: attempt {claim.attempts} by {claim.caller} " \
                          f"({where}) never finished"  # fmt: skip
                    self.folder.note_error(key, owner.get("item"), claim.attempts, claim.caller, why)
            self.folder.drop_owner(key)
        return entry

    def _claimed(self, key: str) -> tuple:
        """(lock record, queue, the store claim it holds or None, when it was claimed or None if it is gone)."""
        owner = self.folder.owner(key) or {}
        queue, claim = self.claim_of(owner)
        if claim is not None:
            return owner, queue, claim, claim.claimed_at
        try:
            return owner, queue, None, parse_iso(owner["claimed_at"])
        except (KeyError, TypeError, ValueError, AttributeError):
            try:  # a record its claimer died writing: as old as its folder
                return owner, queue, None, os.stat(self.folder.lock_dir(key)).st_mtime
            except FileNotFoundError:
                return owner, queue, None, None
