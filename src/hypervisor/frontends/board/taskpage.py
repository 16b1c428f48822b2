"""One task as its board page shows it (`GET /api/task/<id>`): fields, rendered body, claim, logs and events."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ...claims import views
from ...core import rules
from ...core.errors import TaskNotFound
from ...supervisor import runs
from .render import body_html

if TYPE_CHECKING:
    from ...claims.queue import TaskQueue

EVENTS_SHOWN = 200
LOG_NAME_SUFFIX = ".log"


def inside(path: str, folder: str) -> bool:
    """Whether `path`, symlinks resolved, is in `folder` (symlinks resolved): what the board may serve."""
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real.startswith(base + os.sep)


def task_logs(state: str, task_id: str) -> list[dict]:
    """Every worker log of the task in every recorded run, oldest run first."""
    found = []
    prefix = task_id + "."
    for run_id in runs.run_ids(state):
        logs = os.path.join(state, runs.RUNS_DIR, run_id, "logs")
        try:
            names = sorted(os.listdir(logs))
        except OSError:
            continue
        for name in names:
            attempt = name[len(prefix) : -len(LOG_NAME_SUFFIX)]
            if name.startswith(prefix) and name.endswith(LOG_NAME_SUFFIX) and attempt.isdigit():
                try:
                    size = os.lstat(os.path.join(logs, name)).st_size
                except OSError:
                    continue
                found.append({"run_id": run_id, "attempt": int(attempt), "size": size,
                              "url": f"/logs/{run_id}/{name}"})  # fmt: skip
    return found


def task_page(queue: TaskQueue, task_id: str) -> dict:
    """The task page's data; TaskNotFound when there is no such task (or its file lies outside the task root)."""
    if not rules.is_task_id(task_id):
        raise TaskNotFound(f"no task {task_id!r}")
    summary = queue.store.find(task_id)
    if not inside(queue.store.path_of(summary), queue.store.root):
        raise TaskNotFound(f"no task {task_id!r}")
    summary, doc = queue.store.read(summary)
    events = [event for event in queue.events() if event.get("task") == task_id]
    return {
        "task": dict(summary),
        "body_html": body_html(doc.body),
        "claim": views.claim_view(queue, task_id),
        "activity": views.activity(queue, task_id),
        "logs": task_logs(queue.store.state, task_id),
        "events": events[-EVENTS_SHOWN:],
        "events_total": len(events),
    }  # fmt: skip
