"""The task-state rules: statuses, transitions, ids, what is claimable and in which order; one source for every caller."""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from .errors import ClaimRefused, InvalidTaskId

STATUSES = ("inbox", "active", "in_progress", "blocked", "review", "done", "cancelled")
CLAIMABLE_STATUSES = frozenset({"inbox", "active"})
# A dependency in one of these no longer holds its dependents back.
FINISHED_STATUSES = frozenset({"done", "cancelled"})
DEFAULT_STATUS = "inbox"
PRIORITIES = (0, 1, 2, 3, 4)
DEFAULT_PRIORITY = 2
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_LEASE_SECONDS = 30 * 60
DEAD_LETTER_REASON = "max_attempts"

# \Z, not $: `$` also matches before a trailing newline, and an id names a file.
TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")

TRANSITIONS: Mapping[str, frozenset[str]] = {
    "inbox": frozenset({"active", "in_progress", "blocked", "review", "done", "cancelled"}),
    "active": frozenset({"inbox", "in_progress", "blocked", "review", "done", "cancelled"}),
    "in_progress": frozenset({"active", "blocked", "review", "done", "cancelled"}),
    "blocked": frozenset({"inbox", "active", "cancelled", "done"}),
    "review": frozenset({"active", "in_progress", "blocked", "done", "cancelled"}),
    "done": frozenset({"active"}),
    "cancelled": frozenset({"inbox", "active"}),
}


def check_task_id(task_id: object) -> str:
    """`task_id` if it is a legal id; InvalidTaskId naming the value and the rule otherwise."""
    if not isinstance(task_id, str) or not TASK_ID_RE.match(task_id) or ".." in task_id:
        msg = (
            f"task id {task_id!r} is not allowed: an id is 1-128 characters of letters, digits, '.', '_' "
            "and '-', starts with a letter or digit, and has no '..'"
        )
        raise InvalidTaskId(msg)
    return task_id


def check_transition(task_id: str, current: str, target: str) -> None:
    """Raise ClaimRefused unless a task may move from `current` to `target`."""
    if target not in STATUSES:
        msg = f"task {task_id}: status {target!r} is not one of {', '.join(STATUSES)}"
        raise ClaimRefused(msg)
    if target == current:
        return
    allowed = TRANSITIONS.get(current, frozenset())
    if target not in allowed:
        msg = (
            f"task {task_id} is {current} and cannot become {target}; from {current} it can become: "
            f"{', '.join(s for s in STATUSES if s in allowed) or 'nothing'}"
        )
        raise ClaimRefused(msg)


def blocking_dependencies(depends_on: Iterable[str], status_of: Mapping[str, str]) -> list[str]:
    """The dependencies that still hold a task back; a missing one blocks, shown as `id (missing)`."""
    waiting = []
    for dep in depends_on:
        status = status_of.get(dep)
        if status is None:
            waiting.append(f"{dep} (missing)")
        elif status not in FINISHED_STATUSES:
            waiting.append(f"{dep} ({status})")
    return waiting


def is_status_claimable(status: str) -> bool:
    """Whether a task in this status may be claimed, leases and dependencies aside."""
    return status in CLAIMABLE_STATUSES


def scope_allows(path: str, scope: Iterable[str]) -> bool:
    """Whether `path` (relative to the project, '/'-separated) falls inside one of a task's scope globs.

    `*` and `?` stay within one folder, `**` spans folders, `[...]` is a character class; a glob with none of
    these names a file or a folder and everything below it.
    """
    return any(_scope_pattern(glob).match(path) for glob in scope)


_SCOPE_CACHE: dict[str, re.Pattern] = {}


def _scope_pattern(glob: str) -> re.Pattern:
    pattern = _SCOPE_CACHE.get(glob)
    if pattern is None:
        pattern = _SCOPE_CACHE[glob] = re.compile(_glob_regex(glob) + r"\Z", re.DOTALL)
    return pattern


def _glob_regex(glob: str) -> str:
    glob = glob.strip()
    while glob.startswith("./"):
        glob = glob[2:]
    if not any(char in glob for char in "*?["):
        return re.escape(glob.rstrip("/")) + "(?:/.*)?"
    if glob.endswith("/"):
        glob += "**"
    out, i = [], 0
    while i < len(glob):
        char = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[" and "]" in glob[i + 2:]:
            end = glob.index("]", i + 2)
            body = glob[i + 1:end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return "".join(out)


def queue_order(priority: int, created: str | None, task_id: str) -> tuple:
    """The sort key of the ready queue: priority, then created (missing last), then id."""
    return (priority, created is None, created or "", task_id)
