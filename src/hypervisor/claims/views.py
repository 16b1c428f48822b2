"""Read-only views of a queue shaped for the front ends: `list`/list_tasks, `show`/get_task, `stats`, `preflight`.

Functions taking the TaskQueue; they read the store and the claim records and change nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..core import rules
from ..core.errors import storage_error
from ..core.timeutil import iso, now
from . import recovery, workers

if TYPE_CHECKING:
    from ..tasks.task import InvalidEntry, TaskSummary
    from .queue import TaskQueue


def listing(queue: TaskQueue, statuses: Iterable[str] = (), project: str | None = None, assignee: str | None = None,
            ready: bool = False) -> tuple[list[TaskSummary], list[InvalidEntry]]:  # fmt: skip
    """(tasks matching the filters in queue order, invalid-file reports): what `list` and list_tasks show."""
    if not os.path.isdir(queue.store.root):
        queue.store.ensure_state()  # raises the clear "does not exist" message
    queue.store.refresh()
    try:
        recovery.reconcile_all(queue)  # a listing is a touch: files that do not show their live claim are written back
    except OSError as error:  # a read stays a read where nothing can be written (a read-only or full disk)
        from .holding import warn

        warn(f"a task file that does not show its live claim was not written back: {storage_error(error)}")
    invalid = queue.store.invalid()
    if not ready:  # filtered in the index: only the rows shown are decoded
        return queue.store.select(statuses, project, assignee), invalid
    wanted = set(statuses)
    items = [
        s
        for s in queue.ready(project=project, max_age=1.0)  # the walk just made
        if (not wanted or s["status"] in wanted) and (assignee is None or s["assignee"] == assignee)
    ]
    return items, invalid


def claim_view(queue: TaskQueue, task_id: str) -> dict | None:
    """A task's claim record as `show` and get_task present it, or None."""
    claim = queue.read_claim(task_id)
    if claim is None:
        return None
    return {
        "caller": claim.caller,
        "worker": claim.worker,
        "lease_expires_at": iso(claim.lease_expires_at),
        "live": not claim.expired(now()),
        "attempts": claim.attempts,
    }


def activity(queue: TaskQueue, task_id: str) -> dict | None:
    """What the holder of a task's claim has done so far (tool calls, files edited, the last call, from the hooks'
    journal), or None when the task has no claim record. The claim's token never leaves this function."""
    claim = queue.read_claim(task_id)
    if claim is None:
        return None
    return workers.journal_activity(queue.store.state, task_id, claim.token)


def stats(queue: TaskQueue, by_project: bool = False) -> dict:
    """Counts by status, claims, readiness and dead letters (optionally per project)."""
    valid, invalid = queue.store.summaries()
    records = queue.claim_records()
    live = queue.live_claims()
    ready_ids = {s["id"] for s in queue.ready()}
    result: dict = {
        "total": len(valid),
        "invalid": len(invalid),
        "by_status": {status: 0 for status in rules.STATUSES},
        "ready": len(ready_ids),
        "claimed": len(live),
        "expired_claims": len(records) - len(live),
    }
    projects: dict[str, dict] = {}
    for summary in valid:
        result["by_status"][summary["status"]] += 1
        if by_project:
            key = summary["project"] or "(none)"
            bucket = projects.setdefault(key, {"total": 0, "ready": 0, **{s: 0 for s in rules.STATUSES}})
            bucket["total"] += 1
            bucket[summary["status"]] += 1
            bucket["ready"] += summary["id"] in ready_ids
    if by_project:
        result["by_project"] = dict(sorted(projects.items()))
    return result


def preflight(queue: TaskQueue, ids: Iterable[str] | None = None, project: str | None = None) -> dict:
    """What a batch would do: ready tasks in order, and what is skipped and why (done, cancelled and blocked: ids;
    claimed, blocked_deps and other: an entry saying more)."""
    tasks = queue.store.by_id()
    ready_ids = [s["id"] for s in queue.ready(project=project, ids=ids)]
    ready_set = set(ready_ids)
    live = queue.live_claims()
    status_of = {task_id: summary["status"] for task_id, summary in tasks.items()}
    skipped: dict[str, list] = {
        "done": [],
        "cancelled": [],
        "blocked": [],
        "claimed": [],
        "blocked_deps": [],
        "other": [],
    }
    missing = []
    wanted = list(ids) if ids is not None else [t for t, s in tasks.items() if project in (None, s["project"])]
    for task_id in wanted:
        summary = tasks.get(task_id)
        if summary is None:
            missing.append(task_id)
            continue
        if task_id in ready_set:
            continue
        status = summary["status"]
        if status in ("done", "cancelled") or (status == "blocked" and task_id not in live):
            skipped[status].append(task_id)
        elif task_id in live:
            skipped["claimed"].append({"id": task_id, "by": live[task_id].caller,
                                       "until": iso(live[task_id].lease_expires_at)})  # fmt: skip
        elif rules.is_status_claimable(status):
            waiting = rules.blocking_dependencies(summary["depends_on"], status_of)
            skipped["blocked_deps"].append({"id": task_id, "waiting_on": waiting})
        else:
            skipped["other"].append({"id": task_id, "status": status})
    return {"ready": ready_ids, "skipped": skipped, "missing": missing}
