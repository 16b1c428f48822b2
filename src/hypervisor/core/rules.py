"""The task-state rules: statuses, transitions, ids, what is claimable and in which order; one source for every caller."""

from __future__ import annotations

from .errors import ClaimRefused, InvalidTaskId
from .limits import quote

TYPE_CHECKING = False  # typing costs the hooks 4 ms to import, and the annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

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
# The built-in triage releases an open task it triaged with the reason `triaged: <what it set>`; a run reports it
# as `triaged`, not as a worker that gave its task back.
TRIAGED_REASON = "triaged"

# The id rule as a regular expression (for the JSON Schema) and as the character sets `is_task_id` checks; the
# hooks avoid importing `re`. Tests hold the two to each other. The pattern ends in `(?![\s\S])`, "no character
# follows", not `$`: Python's `re` (which jsonschema validates with) lets `$` match before a trailing newline, and
# `\Z` is no anchor in ECMA-262, the dialect JSON Schema patterns are written in; the lookahead means the end of the
# text in both.
TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(?![\s\S])"
TASK_ID_MAX = 128
TASK_ID_RULE = (f"an id is 1-{TASK_ID_MAX} characters of letters, digits, '.', '_' and '-', starts with a letter or "
                "digit, and has no '..'")  # fmt: skip
_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ID_FIRST | frozenset("._-")

# The MCP surface, named once for the server, the hooks and the prompts: the server, its tools, the tools whose
# success hands the caller a claim, and the prefix each host CLI puts before a tool's name.
MCP_SERVER = "task_manager"
MCP_CLAIM_TOOL = "claim_next_task"
MCP_CREATE_TOOL = "create_task"  # a follow-up; the hooks' scope refusal names it
MCP_TOOLS = ("list_tasks", "get_task", MCP_CLAIM_TOOL, "update_task", "complete_task", "block_task", "release_task",
             "get_index_stats", MCP_CREATE_TOOL)  # fmt: skip
MCP_CLAIMING_TOOLS = frozenset({MCP_CLAIM_TOOL, "update_task"})  # update_task: status in_progress claims
MCP_TOOL_PREFIX = {"claude": f"mcp__plugin_hypervisor_{MCP_SERVER}__", "gemini": f"mcp_{MCP_SERVER}_"}


def mcp_tool_name(host: str, tool: str) -> str:
    """What `host` (claude, gemini) calls one of the server's tools: mcp__plugin_hypervisor_task_manager__get_task."""
    return MCP_TOOL_PREFIX[host] + tool


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
        and _ID_CHARS.issuperset(value)
        and ".." not in value
    )


def check_task_id(task_id: object) -> str:
    """`task_id` if it is a legal id; InvalidTaskId naming the value and the rule otherwise."""
    if not is_task_id(task_id):
        msg = f"task id {quote(task_id)} is not allowed: {TASK_ID_RULE}; `hypervisor list` (MCP: list_tasks) shows the ids"
        raise InvalidTaskId(msg)
    return task_id


def may_become(current: str, target: str) -> bool:
    """Whether a task may move from status `current` to `target` (staying put counts)."""
    return target == current or target in TRANSITIONS.get(current, frozenset())


def check_transition(task_id: str, current: str, target: str) -> None:
    """Raise ClaimRefused unless a task may move from `current` to `target`."""
    if target not in STATUSES:
        msg = f"task {task_id}: status {quote(target)} is not one of {', '.join(STATUSES)}"
        raise ClaimRefused(msg)
    if not may_become(current, target):
        allowed = TRANSITIONS.get(current, frozenset())
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
    Within one name the glob reads as fnmatch reads it: `[!abc]` negates a class, `[^abc]` does not.
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
    """fnmatch.fnmatchcase for one folder or file name, without `re`: `*`, `?` and `[...]` exactly as fnmatch reads
    them (`[!abc]` negates, `[^abc]` is a class of `^`, `a`, `b`, `c`; a `]` first in a class is a member; an
    unclosed `[` is itself; a backwards range such as `[z-a]` is empty). tests/test_scope_classes.py holds the two
    to each other."""
    if not any(char in pattern for char in "*?["):
        return pattern == name
    tokens = _tokens(pattern)
    t = j = 0
    star, mark = -1, 0  # the last `*` seen and where in `name` it starts to match: the one point to backtrack to
    while j < len(name):
        token = tokens[t] if t < len(tokens) else None
        if token == "*":
            star, mark = t, j
            t += 1
        elif token is not None and (token == "?" or token == name[j] or (type(token) is tuple
                                                                         and _in_class(name[j], token))):  # fmt: skip
            t += 1
            j += 1
        elif star >= 0:
            mark += 1
            t, j = star + 1, mark
        else:
            return False
    while t < len(tokens) and tokens[t] == "*":
        t += 1
    return t == len(tokens)


def _tokens(pattern: str) -> list:
    """`pattern` as matchers of one character each: "*" (any run), "?" (any), a class tuple, or a literal."""
    tokens: list = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "[":
            found = _read_class(pattern, i + 1)
            if found is not None:
                i, cls = found
                tokens.append(cls)
                continue
        if char != "*" or not tokens or tokens[-1] != "*":
            tokens.append(char)
        i += 1
    return tokens


def _read_class(pattern: str, i: int) -> tuple[int, tuple] | None:
    """(the index after the class, (negated, members, ranges)) of the class whose body starts at pattern[i], read
    step for step as fnmatch.translate reads it; None where no `]` closes it (the `[` is then a literal)."""
    n = len(pattern)
    j = i
    if j < n and pattern[j] == "!":
        j += 1
    if j < n and pattern[j] == "]":
        j += 1
    while j < n and pattern[j] != "]":
        j += 1
    if j >= n:
        return None
    if "-" not in pattern[i:j]:
        chunks = [pattern[i:j]]
    else:  # the pieces between range dashes; a dash first (after any `!`) or last is a member
        chunks = []
        start, k = i, i + 2 if pattern[i] == "!" else i + 1
        while True:
            k = pattern.find("-", k, j)
            if k < 0:
                break
            chunks.append(pattern[start:k])
            start, k = k + 1, k + 3
        if start < j:
            chunks.append(pattern[start:j])
        else:
            chunks[-1] += "-"
        for k in range(len(chunks) - 1, 0, -1):  # a backwards range matches nothing: fnmatch drops it
            if chunks[k - 1][-1] > chunks[k][0]:
                chunks[k - 1] = chunks[k - 1][:-1] + chunks[k][1:]
                del chunks[k]
    negated = chunks[0][:1] == "!"
    if negated:
        chunks[0] = chunks[0][1:]
    # Between two chunks stands a range from the last character of one to the first of the next.
    ranges = tuple((chunks[k][-1], chunks[k + 1][0]) for k in range(len(chunks) - 1))
    members = "".join(chunk[1 if k else 0 : len(chunk) - (k < len(chunks) - 1)] for k, chunk in enumerate(chunks))
    return j + 1, (negated, members, ranges)


def _in_class(char: str, cls: tuple) -> bool:
    negated, members, ranges = cls
    inside = char in members or any(low <= char <= high for low, high in ranges)
    return inside != negated


def queue_order(priority: int, created: str | None, task_id: str) -> tuple:
    """The sort key of the ready queue: priority, then created (missing last), then id."""
    return (priority, created is None, created or "", task_id)
