"""Rule 2 and the repairs built on it: the claim store says who holds a task, and the task file is made to agree.

Every way a task file and its claim can part (a Redis restart, a kill between two writes, a full disk, an editor
saving an old buffer) ends in one of three states, each repaired here:
- a live claim whose file does not show it: the file is written back (on a renewal, a listing, a hook's renewal);
- a live claim whose file says it is over (done, blocked, review, cancelled): the claim ends;
- a file that says in_progress with no live claim (stranded): claimable again once a whole lease has passed since
  the file last changed, as a takeover (attempt counted, event, a line in the worker log); `reopen` frees it at once.
  A file a person set in_progress by hand (no claim ever counted an attempt on it: `attempts` 0) is theirs, not
  stranded: it is left to its assignee until someone reopens it.
"""

from __future__ import annotations

import os

from ..core import rules
from ..core.errors import ClaimRefused, TaskNotFound, UsageError
from ..core.timeutil import iso, now
from ..tasks import worklog
from . import advice, workers

TYPE_CHECKING = False  # typing costs every CLI call 2 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from ..tasks.store import TaskStore
    from ..tasks.task import TaskSummary
    from ..tasks.taskfile import TaskDoc
    from .queue import TaskQueue
    from .records import Claim

ENDED_BY_FILE = frozenset({"done", "blocked", "review", "cancelled"})
REOPENABLE = ENDED_BY_FILE | {"in_progress"}
MAX_REASON = 2000


def stranded_wait(store: TaskStore, summary: TaskSummary, lease_seconds: float, at: float) -> float:
    """Seconds until an in_progress task with no live claim may be claimed again (0: now): a whole lease after its
    file last changed, so a holder that only lost its record (a Redis restart) is not overtaken while it works.
    Infinite for a task a person set in_progress by hand (`attempts` 0): only `reopen` frees that."""
    if summary["attempts"] < 1:
        return float("inf")
    try:
        changed = os.stat(store.path_of(summary)).st_mtime
    except OSError:
        return 0.0
    return max(0.0, changed + lease_seconds - at)


def stranded_note(summary: TaskSummary, caller: str, at: float) -> str:
    """The worker-log line of a stranded task's takeover."""
    holder = summary["assignee"] or "nobody"
    text = f"taken over: it was in_progress with no live claim (stranded; last assigned to {holder})"
    return worklog.format_entry(at, caller, "taken over", text)


def write_back(queue: TaskQueue, known: TaskSummary, claim: Claim, first_read: tuple | None = None) -> bool:
    """Make the file show the live `claim` (status in_progress, assignee its caller, attempts at least its count),
    with a `restored` event if it did not; the caller holds the task's lock (and `first_read` is a `read_raw` it
    made under it, or None)."""

    def agree(summary: TaskSummary, doc: TaskDoc) -> tuple[str, str | None] | None:
        before = (summary["status"], summary["assignee"])
        doc.set("status", "in_progress")
        doc.set("assignee", claim.caller)
        if summary["attempts"] < claim.attempts:
            doc.set("attempts", claim.attempts)
        return before if doc.changed else None

    before = queue.store.rewrite_locked(known, agree, first_read)
    if before is not None:
        queue.event("restored", claim.task_id, caller=claim.caller, file_status=before[0], file_assignee=before[1])
    return before is not None


def end_claim(queue: TaskQueue, claim: Claim, status: str) -> None:
    """End a live claim whose file says the task is over (a person's edit, or a kill after the outcome was written)."""
    queue.end(claim)
    queue.event("claim_ended", claim.task_id, caller=claim.caller, reason=f"its file says {status}")


def reconcile(queue: TaskQueue, task_id: str) -> str | None:
    """Rule 2 for one task, under its lock: `restored`, `ended`, or None when file and claim agree (or no live
    claim holds the task)."""
    known = queue.store.find(task_id)
    with queue.store.task_lock(task_id):
        claim = queue.read_claim(task_id)
        if claim is None or claim.expired(now()):
            return None
        first_read = queue.store.read_raw(known)
        summary = first_read[0]
        if summary["status"] in ENDED_BY_FILE:
            end_claim(queue, claim, summary["status"])
            return "ended"
        return "restored" if write_back(queue, known, claim, first_read) else None


def reconcile_all(queue: TaskQueue) -> int:
    """Rule 2 over every live claim whose indexed file does not show it (what a listing does); how many changed."""
    live = queue.live_claims()
    if not live:
        return 0
    changed = 0
    for task_id, claim in live.items():
        summary = queue.store.indexed(task_id)
        if summary is None or (summary["status"] == "in_progress" and summary["assignee"] == claim.caller):
            continue
        try:
            changed += queue.reconcile(task_id) is not None
        except TaskNotFound:
            continue
    return changed


def reopen(queue: TaskQueue, task_id: str, reason: str | None, reset_attempts: bool, who: str | None) -> dict:
    """Put a blocked, dead-lettered, done, cancelled, review or stranded task back to `active`, with a worker-log
    line saying who reopened it, from what, and why. A dead letter reopened without `reset_attempts` gets one more
    attempt; with it, all of them again."""
    if reason is not None and (len(reason) > MAX_REASON or not reason.strip()):
        raise UsageError(advice.bad_reason(MAX_REASON))
    who = who or _person()
    known = queue.store.find(task_id)
    limit = queue.config.max_attempts
    with queue.store.task_lock(task_id):
        claim = queue.read_claim(task_id)
        at = now()
        if claim is not None and not claim.expired(at):
            raise ClaimRefused(advice.reopen_claimed(task_id, claim, at))

        def patch(summary: TaskSummary, doc: TaskDoc) -> dict:
            status = summary["status"]
            if status not in REOPENABLE:
                blocking = rules.blocking_dependencies(
                    summary["depends_on"], queue.store.fresh_statuses(summary["depends_on"])
                )
                raise ClaimRefused(advice.reopen_not_needed(task_id, status, blocking))
            attempts = max(summary["attempts"], claim.attempts if claim else 0)
            left = 0 if reset_attempts else min(attempts, limit - 1)
            doc.set("status", "active")
            for key in ("blocked_reason", "completed"):
                doc.remove(key)
            if status == "in_progress":
                doc.remove("assignee")
            if left != summary["attempts"]:
                doc.set("attempts", left)
            doc.set("modified", iso(at))
            text = f"from {status}" + (f": {reason}" if reason else "")
            if left != attempts:
                text += f" (attempts {attempts} -> {left}; {limit - left} left)"
            doc.append_to_section(worklog.HEADING, worklog.format_entry(at, who, "reopened", text))
            return {"id": task_id, "status": "active", "previous_status": status, "attempts": left,
                    "attempts_left": limit - left}  # fmt: skip

        result = queue.store.rewrite_locked(known, patch)
        if claim is not None:
            queue.claims.drop(task_id, claim.token)
            workers.drop_journal(queue.store.state, task_id, claim.token)
        queue.event("reopened", task_id, caller=who, previous_status=result["previous_status"],
                    attempts=result["attempts"], reason=reason)  # fmt: skip
        return result


def _person() -> str:
    """Who is at the keyboard, for the worker log."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "a person"
