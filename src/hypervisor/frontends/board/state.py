"""What the board shows, as one JSON-ready dict (`GET /api/state`): the queue by column, the live run, past runs."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ...claims import views
from ...core import fsutil, rules
from ...core.errors import HypervisorError
from ...supervisor import runs
from ...supervisor.agents import tokens_in_log

if TYPE_CHECKING:
    from ...claims.queue import TaskQueue
    from ...tasks.task import TaskSummary

COLUMNS = ("ready", "waiting", "in_progress", "blocked", "review", "done")
COLUMN_TITLES = {"ready": "Ready", "waiting": "Waiting on dependencies", "in_progress": "In progress",
                 "blocked": "Blocked", "review": "Review", "done": "Done"}  # fmt: skip
RECENT_RUNS = 5
SCHEMA_VERSION = 1


def column_of(summary: TaskSummary, status_of: dict[str, str], claimed: bool) -> str:
    """The board column of a task: its status, with inbox/active split into ready and waiting on dependencies."""
    status = summary["status"]
    if status in rules.FINISHED_STATUSES:
        return "done"
    if status == "in_progress" or claimed:
        return "in_progress"
    if status in ("blocked", "review"):
        return status
    if summary["depends_on"] and rules.blocking_dependencies(summary["depends_on"], status_of):
        return "waiting"
    return "ready"


class TokenCounter:
    """Tokens reported so far in a worker's log, re-read only when the log has grown."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int, int]] = {}

    def __call__(self, path: str) -> int:
        try:
            st = os.stat(path)
        except OSError:
            return 0
        key = (st.st_size, st.st_mtime_ns)
        known = self._seen.get(path)
        if known is not None and known[:2] == key:
            return known[2]
        tokens = tokens_in_log(path)
        self._seen[path] = (*key, tokens)
        return tokens


def queue_state(queue: TaskQueue) -> dict:
    """The cards, in queue order within each column (done: most recently modified first), and the invalid files."""
    valid, invalid = queue.store.summaries()
    status_of = {summary["id"]: summary["status"] for summary in valid}
    live = queue.live_claims()
    cards = []
    for summary in valid:
        claim = live.get(summary["id"])
        card = dict(summary)  # every field of the store's summary (a copy: the store caches its own)
        card["column"] = column = column_of(summary, status_of, claim is not None)
        card["claimed_by"] = claim.caller if claim is not None else None
        card["waiting_on"] = (
            rules.blocking_dependencies(summary["depends_on"], status_of) if column == "waiting" else []
        )
        cards.append(card)
    done = sorted((c for c in cards if c["column"] == "done"), key=lambda c: c["modified"] or "", reverse=True)
    cards = [c for c in cards if c["column"] != "done"] + done
    counts = {name: 0 for name in COLUMNS}
    for card in cards:
        counts[card["column"]] += 1
    projects = sorted({c["project"] for c in cards if c["project"]})
    return {"tasks": cards, "counts": counts, "projects": projects,
            "invalid": [{"path": e["path"], "error": e["error"]} for e in invalid]}  # fmt: skip


def log_url(state: str, log_path: str) -> str | None:
    """The board's URL of a worker log under a run folder, or None when the path is not one."""
    runs_dir = os.path.join(state, runs.RUNS_DIR)
    rel = os.path.relpath(log_path, runs_dir).split(os.sep)
    if len(rel) != 3 or rel[1] != "logs" or ".." in rel:
        return None
    return f"/logs/{rel[0]}/{rel[2]}"


def live_run(queue: TaskQueue, count_tokens: TokenCounter) -> dict | None:
    """The latest run as `hypervisor status` reads it, each running worker with its journal, tokens and log."""
    state = queue.store.state
    try:
        view = runs.load_run(state)
    except HypervisorError:
        return None  # no run yet
    except (OSError, ValueError) as error:  # a damaged run.json: said on the page, the queue still shown
        return {"run_id": None, "status": "unreadable", "error": str(error), "workers": [], "finished": [],
                "counts": {}, "tokens": 0}  # fmt: skip
    entries = {entry.get("task_id"): entry for entry in view.get("tasks", []) if isinstance(entry, dict)}
    workers = []
    for attempt in view.get("running", []) if view.get("status") == "running" else []:
        task_id = attempt.get("task_id")
        entry = entries.get(task_id, {})
        log = attempt.get("log") or ""
        activity = views.activity(queue, task_id) if rules.is_task_id(task_id) else None
        landing = attempt.get("landing", entry.get("landing"))
        workers.append({
            "worker": attempt.get("worker"), "task_id": task_id, "title": attempt.get("title"),
            "attempt": attempt.get("attempt"), "started_at": attempt.get("started_at"),
            "last_call": (activity or {}).get("last_call"), "files": (activity or {}).get("files", []),
            "calls": (activity or {}).get("calls", 0), "tokens": count_tokens(log) if log else 0,
            "log_url": log_url(state, log) if log else None, **({"landing": landing} if landing is not None else {}),
        })  # fmt: skip
    finished = []
    for entry in view.get("tasks", []):
        if isinstance(entry, dict) and entry.get("status") != "running":
            item = {key: entry.get(key) for key in ("task_id", "title", "worker", "status", "attempts", "tokens",
                                                    "duration_s", "commit", "branch")}  # fmt: skip
            item["text"] = entry.get("outcome") or entry.get("reason")
            item["log_url"] = log_url(state, entry["log"]) if entry.get("log") else None
            if "landing" in entry:
                item["landing"] = entry["landing"]
            finished.append(item)
    return {
        "run_id": view.get("run_id"), "status": view.get("status"), "agent": view.get("agent"),
        "started_at": view.get("started_at"), "updated_at": view.get("updated_at"),
        "worker_slots": view.get("workers"), "counts": view.get("counts", {}), "workers": workers,
        "finished": finished, "tokens": sum(w["tokens"] for w in workers)
        + sum(int(item.get("tokens") or 0) for item in finished),
        **({"error": view["error"]} if view.get("error") else {}),
    }  # fmt: skip


def recent_runs(state: str, limit: int = RECENT_RUNS) -> list[dict]:
    """The last runs, newest first: their status, runtime, tokens and counts (from summary.json once finished)."""
    shown = []
    for run_id in reversed(runs.run_ids(state)[-limit:]):
        folder = runs.RunFolder(state, run_id)
        try:
            summary = fsutil.read_json(folder.summary_path)
            view = summary if isinstance(summary, dict) else fsutil.read_json(folder.state_path)
        except (OSError, ValueError):
            view = None
        if not isinstance(view, dict):
            shown.append({"run_id": run_id, "status": "unreadable"})
            continue
        shown.append({"run_id": run_id, "status": view.get("status"), "agent": view.get("agent"),
                      "started_at": view.get("started_at"), "finished_at": view.get("finished_at"),
                      "runtime_seconds": view.get("runtime_seconds"), "total_tokens": view.get("total_tokens"),
                      "counts": view.get("counts", {}), "finished": isinstance(summary, dict)})  # fmt: skip
    return shown


def board_state(queue: TaskQueue, count_tokens: TokenCounter | None = None) -> dict:
    """Everything the page shows (the page renders from this and nothing else)."""
    result = {"schema": SCHEMA_VERSION, "task_root": queue.store.root,
              "columns": [{"id": name, "title": COLUMN_TITLES[name]} for name in COLUMNS]}  # fmt: skip
    result.update(queue_state(queue))
    result["run"] = live_run(queue, count_tokens or TokenCounter())
    result["runs"] = recent_runs(queue.store.state)
    return result
