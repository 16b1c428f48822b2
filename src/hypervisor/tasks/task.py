"""A task's fields as the store uses them, read from frontmatter with the light checks the queue relies on."""

from __future__ import annotations

from ..core import rules
from ..core.errors import InvalidTaskId, TaskFileError
from ..core.limits import quote

SUMMARY_FIELDS = (
    "id", "title", "status", "priority", "project", "assignee", "depends_on",
    "tags", "scope", "attempts", "created", "modified",
)  # fmt: skip


TYPE_CHECKING = False  # typing costs every CLI call 2 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Any, NotRequired, TypedDict

    class TaskSummary(TypedDict):
        """The store's view of one valid task (what `summarize` returns, the index holds and list/list_tasks
        print)."""

        id: str
        title: str
        status: str
        priority: int
        project: str | None
        assignee: str | None
        depends_on: list[str]
        tags: list[str]
        scope: list[str]
        attempts: int
        created: str | None
        modified: str | None
        path: str  # relative to the task root
        status_missing: NotRequired[bool]  # only when the file has no `status:` (then status is inbox)

    class InvalidEntry(TypedDict):
        """A file the queue cannot use: what is wrong (`error`), its `path` (relative) and the frontmatter `field`
        at fault, if one; `duplicate_of` names the id a duplicate shares. Index entries holding an "error" key are
        these."""

        error: str
        path: str
        field: str | None
        duplicate_of: NotRequired[str]
else:  # what a TypedDict is when the program runs
    TaskSummary = InvalidEntry = dict


def status_missing_note(task_id: str) -> str:
    """What list, show and validate say of a task file with no `status:` (the queue takes it as inbox)."""
    return (
        f"task {task_id}: status missing, treated as {rules.DEFAULT_STATUS}; write `status: {rules.DEFAULT_STATUS}` "
        "(or active, ...) in its frontmatter to say so"
    )


def is_invalid(entry: TaskSummary | InvalidEntry) -> bool:
    """Whether an index entry reports an unusable file rather than summarising a task."""
    return "error" in entry


def unlink(value: str) -> str:
    """`task-a` for `[[task-a]]` or `[[task-a|alias]]`; other strings unchanged."""
    text = value.strip()
    inner = text[2:-2]
    if text.startswith("[[") and text.endswith("]]") and "]" not in inner:  # no regex: `re` costs a claim 6 ms
        name = inner.split("#", 1)[0].split("|", 1)[0]
        if name:
            return name.strip()
    return text


def _string_list(path: str, name: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise TaskFileError(path, f"{quote(value)} is not allowed: use a list of strings", field=name, value=value,
                        allowed="a string or a list of strings")  # fmt: skip


def summarize(data: dict, path: str, relpath: str, default_id: str) -> TaskSummary:
    """The store's view of one task: normalised fields plus `path`; TaskFileError if the queue cannot use it."""
    raw_id = data.get("id", default_id)
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    try:
        task_id = rules.check_task_id(raw_id)
    except InvalidTaskId as error:
        field = "id" if "id" in data else None
        hint = "" if field else " (the id defaults to the file name; set 'id:' to a legal one)"
        allowed = f"1-{rules.TASK_ID_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit"
        raise TaskFileError(path, f"{error}{hint}", field=field, value=raw_id, allowed=allowed) from None

    status = data.get("status", rules.DEFAULT_STATUS)
    if status not in rules.STATUSES:
        allowed = "one of " + ", ".join(rules.STATUSES)
        raise TaskFileError(path, f"{quote(status)} is not {allowed}", field="status", value=status, allowed=allowed)

    priority = data.get("priority", rules.DEFAULT_PRIORITY)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority not in rules.PRIORITIES:
        allowed = "an integer 0 (highest) to 4"
        raise TaskFileError(path, f"{quote(priority)} is not allowed: use {allowed}", field="priority",
                            value=priority, allowed=allowed)  # fmt: skip

    attempts = data.get("attempts", 0)
    if attempts is None:
        attempts = 0
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        allowed = "a whole number 0 or more"
        raise TaskFileError(path, f"{quote(attempts)} is not allowed: use {allowed}", field="attempts",
                            value=attempts, allowed=allowed)  # fmt: skip

    depends_on = [unlink(dep) for dep in _string_list(path, "depends_on", data.get("depends_on"))]
    project = data.get("project")
    if project is not None and not isinstance(project, str):
        raise TaskFileError(path, f"{quote(project)} is not allowed: use a project name", field="project",
                            value=project, allowed="a project name (a string)")  # fmt: skip
    title = data.get("title")
    assignee = data.get("assignee")
    summary: dict = {
        "id": task_id,
        "title": title if isinstance(title, str) else task_id,
        "status": status,
        "priority": priority,
        "project": unlink(project) if project else None,
        "assignee": assignee if isinstance(assignee, str) else None,
        "depends_on": depends_on,
        "tags": _string_list(path, "tags", data.get("tags")),
        "scope": _string_list(path, "scope", data.get("scope")),
        "attempts": attempts,
        "created": _text(data.get("created")),
        "modified": _text(data.get("modified")),
        "path": relpath,
    }
    if "status" not in data:  # taken as inbox, and said so by list, show and validate (status_missing_note)
        summary["status_missing"] = True
    return summary  # type: ignore[return-value]  # a TaskSummary


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
