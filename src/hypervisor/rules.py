"""The task-state rules: statuses, transitions, ids, what is claimable and in which order; one source for every caller."""

from __future__ import annotations

from .errors import ClaimRefused, InvalidTaskId

TYPE_CHECKING = False  # typing costs the hooks 4 ms to import, and the annotations are never evaluated
if TYPE_CHECKING:
    from typing import Iterable, Mapping

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

# The id rule as a regular expression (for the JSON Schema) and as the character sets `is_task_id` checks; the
# hooks avoid importing `re`. A test holds the two to each other.
TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
TASK_ID_MAX = 128
_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ID_FIRST | frozenset("._-")

TRANSITIONS: Mapping[str, frozenset[str]] = {
    "inbox": frozenset({"active", "in_progress", "blocked", "review", "done", "cancelled"}),
    "active": frozenset({"inbox", "in_progress", "blocked", "review", "done", "cancelled"}),
    "in_progress": frozenset({"active", "blocked", "review", "done", "cancelled"}),
    "blocked": frozenset({"inbox", "active", "cancelled", "done"}),
    "review": frozenset({"active", "in_progress", "blocked", "done", "cancelled"}),
    "done": frozenset({"active"}),
    "cancelled": frozenset({"inbox", "active"}),
}


def is_task_id(value: object) -> bool:
    """Whether `value` is a legal task id: it names a file, so no path tricks."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= TASK_ID_MAX
        and value[0] in _ID_FIRST
        and all(char in _ID_CHARS for char in value)
        and ".." not in value
    )


def check_task_id(task_id: object) -> str:
    """`task_id` if it is a legal id; InvalidTaskId naming the value and the rule otherwise."""
    if not is_task_id(task_id):
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

    As in .gitignore: `*`, `?` and `[...]` stay within one folder name; a `**` segment spans folders (a trailing
    `/**` needs at least one more name); a glob without wildcards names a file or a folder and everything below.
    """
    names = path.split("/")
    return any(_glob_allows(glob, names) for glob in scope)


def _glob_allows(glob: str, names: list[str]) -> bool:
    glob = glob.strip()
    while glob.startswith("./"):
        glob = glob[2:]
    if not any(char in glob for char in "*?["):
        parts = glob.rstrip("/").split("/")
        return names[: len(parts)] == parts
    if glob.endswith("/"):
        glob += "**"
    return _match_segments(glob.split("/"), names)


def _match_segments(parts: list[str], names: list[str]) -> bool:
    if not parts:
        return not names
    head, rest = parts[0], parts[1:]
    if head == "**":
        first = 1 if not rest else 0  # a trailing ** matches what is inside, not the folder itself
        return any(_match_segments(rest, names[index:]) for index in range(first, len(names) + 1))
    return bool(names) and _match_name(head, names[0]) and _match_segments(rest, names[1:])


def _match_name(pattern: str, name: str) -> bool:
    """fnmatch for one folder or file name, case-sensitive: `*`, `?`, `[abc]`, `[a-z]`, `[!abc]`."""
    if not any(char in pattern for char in "*?["):
        return pattern == name
    return _match_from(pattern, 0, name, 0)


def _match_from(pattern: str, i: int, name: str, j: int) -> bool:
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            while i < len(pattern) and pattern[i] == "*":
                i += 1
            return i == len(pattern) or any(_match_from(pattern, i, name, k) for k in range(j, len(name) + 1))
        if j == len(name):
            return False
        if char == "[" and pattern.find("]", i + 2) > 0:
            end = pattern.find("]", i + 2)
            body = pattern[i + 1:end]
            negate = body[:1] in ("!", "^")
            if _in_class(name[j], body[1:] if negate else body) == negate:
                return False
            i = end + 1
        elif char != "?" and char != name[j]:
            return False
        else:
            i += 1
        j += 1
    return j == len(name)


def _in_class(char: str, body: str) -> bool:
    index = 0
    while index < len(body):
        if index + 2 < len(body) and body[index + 1] == "-":
            if body[index] <= char <= body[index + 2]:
                return True
            index += 3
        else:
            if body[index] == char:
                return True
            index += 1
    return False


def queue_order(priority: int, created: str | None, task_id: str) -> tuple:
    """The sort key of the ready queue: priority, then created (missing last), then id."""
    return (priority, created is None, created or "", task_id)
