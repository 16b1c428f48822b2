"""A supervisor run on disk: its folder under <state>/runs/, the live state file, the summary and its schema."""

from __future__ import annotations

import json
import os
import secrets
import time

from ..core import fsutil
from ..core.errors import HypervisorError, UsageError
from ..core.timeutil import humanize

RUNS_DIR = "runs"
STATE_FILE = "run.json"
SUMMARY_FILE = "summary.json"
SUMMARY_SCHEMA_FILE = os.path.join(os.path.dirname(__file__), "summary.schema.json")

# How a run's task ends, the one vocabulary of progress lines, `hypervisor status`, summary.json and the README:
# done / blocked (as its file says), triaged (the built-in triage set its assignee and released it, open),
# released (the worker gave it back without an outcome), dead_letter (max_attempts reached), lost, interrupted.
OUTCOMES = ("done", "triaged", "blocked", "released", "dead_letter", "lost", "interrupted")
FAILED = ("dead_letter", "lost", "interrupted", "held")  # held: --land could not move BRANCH
LAND_COUNTS = ("held", "landing")  # with --land: verified but not landed, and in the landing queue now
LIVE_COUNTS = ("running", "pending", "not_started")  # tasks of the batch without an outcome (yet)


def duration_text(seconds: float) -> str:
    """A run's or a task's time, written one way everywhere: '0.6s', '42.0s', '4 min'."""
    return f"{seconds:.1f}s" if seconds < 60 else humanize(seconds)


def attempts_text(attempts: int, max_attempts: int | None) -> str:
    """The task's own attempt count (its file's `attempts:`), against the limit."""
    return f"attempts: {attempts}" + (f" of {max_attempts}" if max_attempts else "")


def counts_text(counts: dict, sep: str = ", ") -> str:
    """The non-zero counts of a run, in the order of OUTCOMES, then the tasks without an outcome."""
    parts = [f"{name} {counts[name]}" for name in (*OUTCOMES, *LIVE_COUNTS, *LAND_COUNTS) if counts.get(name)]
    return sep.join(parts) or "no task was started"


def run_line(summary: dict) -> str:
    """The last line of a run, the same on the progress stream and in the printed summary."""
    return (f"run {summary['run_id']} {summary['status']} in {duration_text(summary['runtime_seconds'])}: "
            f"{counts_text(summary['counts'])}; {summary['total_tokens']} tokens")  # fmt: skip


def new_run_id() -> str:
    """A run id that sorts by start time (UTC) and does not collide: 20261123-101502-3f9a."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


class RunFolder:
    """`<state>/runs/<run-id>/`: run.json (live state), summary.json (at the end), logs/<task>.<attempt>.log."""

    def __init__(self, state: str, run_id: str) -> None:
        self.run_id = run_id
        self.path = os.path.join(state, RUNS_DIR, run_id)
        self.state_path = os.path.join(self.path, STATE_FILE)
        self.summary_path = os.path.join(self.path, SUMMARY_FILE)

    def create(self) -> None:
        os.makedirs(os.path.join(self.path, "logs"), exist_ok=True)

    def log_path(self, task_id: str, attempt: int) -> str:
        return os.path.join(self.path, "logs", f"{task_id}.{attempt}.log")

    def verify_log_path(self, task_id: str, attempt: int) -> str:
        return os.path.join(self.path, "logs", f"{task_id}.{attempt}.verify.log")

    def write_state(self, state: dict) -> None:
        """The live view: atomic for readers but not fsync'd (it is rewritten on every start and exit)."""
        fsutil.atomic_write(self.state_path, (json.dumps(state, indent=1) + "\n").encode(), durable=False)

    def write_summary(self, summary: dict) -> None:
        """Write summary.json, after checking it against the schema that ships with the package."""
        validate_summary(summary)
        fsutil.atomic_write(self.summary_path, (json.dumps(summary, indent=2) + "\n").encode())


class TaskEntry:
    """What the run did with one task over all its attempts: one `workers[]` entry of summary.json."""

    def __init__(self, task_id: str, title: str) -> None:
        self.task_id = task_id
        self.title = title
        self.worker = ""
        self.status = "running"
        self.text = ""
        self.commit: str | None = None
        self.branch: str | None = None
        self.tokens = 0
        self.duration_s = 0.0
        self.attempts = 0  # the task's own count (its file's `attempts:`), as last read or written
        self.logs: list[str] = []
        self.exit_codes: list[int | None] = []
        self.verified: bool | None = None  # with --land: whether verify passed in the task's worktree
        self.landed = False
        self.landed_commit: str | None = None
        self.conflict_files: list[str] = []
        self.landing: str | None = None  # queued, verifying, merging, landed, reopened, held

    def to_json(self) -> dict:
        out = {"task_id": self.task_id, "title": self.title, "worker": self.worker, "status": self.status}
        out["outcome" if self.status == "done" else "reason"] = self.text or self.status
        out.update(commit=self.commit, branch=self.branch, tokens=self.tokens, duration_s=round(self.duration_s, 3),
                   attempts=self.attempts, workers_started=len(self.logs), log=self.logs[-1] if self.logs else "",
                   logs=self.logs, exit_codes=self.exit_codes)  # fmt: skip
        out.update(verified=self.verified, landed=self.landed, landed_commit=self.landed_commit,
                   conflict_files=self.conflict_files)  # fmt: skip
        if self.landing:
            out["landing"] = self.landing
        return out


def skipped_preflight(report: dict, started: set[str], invalid: list[str]) -> dict:
    """The `skipped_preflight` of summary.json: what the batch's preflight left out (a task waiting on
    dependencies that then ran in the run is not listed)."""
    skipped = report.get("skipped", {})
    return {
        "done": list(skipped.get("done", [])),
        "cancelled": list(skipped.get("cancelled", [])),
        "blocked": list(skipped.get("blocked", [])),
        "claimed": [item["id"] for item in skipped.get("claimed", [])],
        "blocked_deps": [item["id"] for item in skipped.get("blocked_deps", []) if item["id"] not in started],
        "other": [item["id"] for item in skipped.get("other", [])],
        "missing": list(report.get("missing", [])),
        "invalid": invalid,
    }


def summary_schema() -> dict:
    with open(SUMMARY_SCHEMA_FILE, encoding="utf-8") as handle:
        return json.load(handle)


def validate_summary(summary: dict) -> None:
    """Raise HypervisorError naming the field if `summary` does not match summary.schema.json."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(summary_schema()).iter_errors(summary), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(part) for part in errors[0].absolute_path) or "(top)"
        raise HypervisorError(f"run summary does not match {SUMMARY_SCHEMA_FILE} at {where}: {errors[0].message}")


def run_ids(state: str) -> list[str]:
    """The ids of the runs recorded under a state folder, oldest first."""
    try:
        names = os.listdir(os.path.join(state, RUNS_DIR))
    except FileNotFoundError:
        return []
    return sorted(name for name in names if os.path.isfile(os.path.join(state, RUNS_DIR, name, STATE_FILE)))


def load_run(state: str, run_id: str | None = None) -> dict:
    """A run's state as `hypervisor status` shows it: run.json, with `summary` once it finished.

    A run whose supervisor died (its pid is gone on this host) while run.json still says running is reported as
    `status: dead`."""
    known = run_ids(state)
    if not known:
        raise UsageError(f"no runs recorded under {os.path.join(state, RUNS_DIR)}: start one with `hypervisor run`")
    if run_id is None:
        run_id = known[-1]
    elif run_id not in known:
        matches = [name for name in known if name.startswith(run_id)]
        if len(matches) != 1:
            shown = ", ".join(known[-5:])
            raise UsageError(f"run {run_id!r} is not recorded ({'ambiguous' if matches else 'unknown'}); "
                             f"recent runs: {shown}")  # fmt: skip
        run_id = matches[0]
    folder = RunFolder(state, run_id)
    view = fsutil.read_json(folder.state_path)
    if not isinstance(view, dict):
        raise HypervisorError(f"{folder.state_path} is damaged: not a JSON object")
    summary = fsutil.read_json(folder.summary_path)
    if summary is not None:
        view["summary"] = summary
    if view.get("status") == "running" and not _supervisor_alive(view):
        view["status"] = "dead"
    return view


def _supervisor_alive(view: dict) -> bool:
    import socket

    pid = view.get("pid")
    if view.get("host") != socket.gethostname() or not isinstance(pid, int):
        return True  # another host's supervisor: cannot tell from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exit_code(summary: dict) -> int:
    """0: the batch ran; 1: a task was dead-lettered or lost, or a file could not be written; 130: interrupted."""
    if summary.get("status") == "interrupted":
        return 130
    return 1 if summary.get("error") or any(entry["status"] in FAILED for entry in summary["workers"]) else 0
