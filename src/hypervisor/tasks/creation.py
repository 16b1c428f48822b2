"""How a new task is made, for `hypervisor new` and MCP create_task alike: its checked fields, its id, its file.

The id is the one given, or a slug of the title (lowercase ASCII letters, digits and '-', at most SLUG_MAX
characters); when a file under the task root already holds that id or is named so, `-2`, `-3`, ... is added, the
first that is free. Ids are picked and files made under one lock per task root (CREATE_LOCK), so concurrent
creators get distinct ids in order, and the file is created exclusively (fsutil.create_new), so a person's file of
the same name made meanwhile is never overwritten either. A counter rather than a random suffix: the ids stay short
and readable, and under the lock a counter cannot collide.
"""

from __future__ import annotations

import os
import re

from ..core import fsutil, limits, rules
from ..core.errors import InvalidTaskId, TaskExists, TaskFileError, UsageError
from ..core.limits import quote
from ..core.timeutil import iso, now
from . import taskfile
from .task import summarize

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from .store import TaskStore
    from .task import TaskSummary
    from .taskfile import TaskDoc

SLUG_MAX = 60  # characters of the title's slug; a suffix adds a few more, far below rules.TASK_ID_MAX
FALLBACK_SLUG = "task"  # the id of a task whose title has no ASCII letter or digit
NEW_STATUSES = ("inbox", "active")  # a new task is claimable; anything else is a later transition
CREATE_LOCK = "create.lock"  # in the state folder: not under locks/, where a task named `create` has its lock
COUNTER_MAX = 10_000  # `-2` .. `-10000`; past that, a random suffix
CREATED_BY = "created_by"  # who filed a follow-up (create_task's caller)
DISCOVERED_FROM = "discovered_from"  # the task its creator held a claim on when filing it

_WORDS = re.compile(r"[a-z0-9]+")


def slug(title: str) -> str:
    """`fix-the-login-page` for "Fix the login page!": accents dropped, other characters between words as one
    '-', cut at a word boundary to at most SLUG_MAX characters; FALLBACK_SLUG when no letter or digit is left."""
    import unicodedata  # here: claims/queue.py imports this module for follow_up_parent on every claim

    ascii_text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii").lower()
    made = ""
    for word in _WORDS.findall(ascii_text):
        longer = f"{made}-{word}" if made else word
        if len(longer) > SLUG_MAX:
            made = made or word[:SLUG_MAX]
            break
        made = longer
    return made or FALLBACK_SLUG


def candidates(base: str) -> Iterator[str]:
    """`base`, then `base-2`, `base-3`, ..., then `base-<random hex>` for ever."""
    yield base
    for number in range(2, COUNTER_MAX + 1):
        yield f"{base}-{number}"
    while True:
        yield f"{base}-{os.urandom(4).hex()}"


# -- the fields, checked ---------------------------------------------------------------------------------------------
def check_title(title: object) -> str:
    limits.check_text("title", title, limits.TITLE_MAX, one_line=True)
    if not title.strip():  # type: ignore[union-attr]
        raise UsageError('title is empty: say in a few words what is to be done, e.g. "Fix the login page"')
    return title.strip()  # type: ignore[union-attr]


def check_id(task_id: object) -> str:
    if not rules.is_task_id(task_id):
        raise UsageError(f"id {quote(task_id)} is not allowed: {rules.TASK_ID_RULE}; or leave the id out and one "
                         "is made from the title")  # fmt: skip
    return task_id  # type: ignore[return-value]


def check_priority(priority: object) -> int:
    """An integer 0-4, also as the text a command line gives ('3')."""
    value = priority
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value not in rules.PRIORITIES:
        raise UsageError(f"priority {quote(priority)} is not allowed: use an integer 0 (highest) to 4 "
                         f"(default {rules.DEFAULT_PRIORITY})")  # fmt: skip
    return value


def check_status(status: object) -> str:
    if status not in NEW_STATUSES:
        raise UsageError(f"status {quote(status)} is not allowed for a new task: use one of {', '.join(NEW_STATUSES)}")
    return status  # type: ignore[return-value]


def check_name(name: str, value: object) -> str:
    """A project or assignee-like name: one line of at most limits.NAME_MAX characters, not empty."""
    limits.check_text(name, value, limits.NAME_MAX, one_line=True)
    if not value.strip():  # type: ignore[union-attr]
        raise UsageError(f"{name} is empty: name one, or leave it out")
    return value.strip()  # type: ignore[union-attr]


def check_depends_on(ids: Iterable[object]) -> list[str]:
    """Task ids, in order, each once; UsageError naming the first bad one (`depends_on[2]: ...`)."""
    ids = list(ids)
    limits.check_count("depends_on", ids, limits.DEPENDS_MAX, "task ids")
    found: list[str] = []
    for index, task_id in enumerate(ids):
        try:
            rules.check_task_id(task_id)
        except InvalidTaskId as error:
            raise UsageError(f"depends_on[{index}]: {error}") from None
        if task_id not in found:
            found.append(task_id)  # type: ignore[arg-type]
    return found


def check_lines(name: str, values: Iterable[object], max_items: int, max_chars: int, what: str) -> list[str]:
    """Scope globs or tags: at most `max_items`, each one non-empty line of at most `max_chars` characters."""
    values = list(values)
    limits.check_count(name, values, max_items, what)
    found: list[str] = []
    for index, value in enumerate(values):
        limits.check_text(f"{name}[{index}]", value, max_chars, one_line=True)
        if not value.strip():  # type: ignore[union-attr]
            raise UsageError(f"{name}[{index}] is empty: leave it out")
        if value.strip() not in found:  # type: ignore[union-attr]
            found.append(value.strip())  # type: ignore[union-attr]
    return found


# -- making the task ------------------------------------------------------------------------------------------------
def create(
    store: TaskStore,
    title: str,
    *,
    task_id: str | None = None,
    project: str | None = None,
    priority: object = None,
    depends_on: Iterable[str] = (),
    scope: Iterable[str] = (),
    tags: Iterable[str] = (),
    status: str = "active",
    body: str = "",
    created_by: str | None = None,
    discovered_from: str | None = None,
) -> tuple[TaskSummary, TaskDoc]:
    """Write one new task file `<root>/<id>.md` and tell the index about it; (its summary, its document).

    Every field is checked first (UsageError naming the field, its value and what is allowed); an explicit
    `task_id` that a file under the root already holds is refused (TaskExists); nothing is written unless the whole
    file reads back as exactly these fields."""
    fields: dict = {"title": check_title(title), "status": check_status(status)}
    fields["priority"] = rules.DEFAULT_PRIORITY if priority is None else check_priority(priority)
    if project is not None:
        fields["project"] = check_name("project", project)
    wanted = check_depends_on(depends_on)
    if wanted:
        fields["depends_on"] = wanted
    for name, values, max_items, max_chars, what in (("scope", scope, limits.SCOPE_MAX, limits.GLOB_MAX, "globs"),
                                                     ("tags", tags, limits.SCOPE_MAX, limits.NAME_MAX, "tags")):  # fmt: skip
        checked = check_lines(name, values, max_items, max_chars, what)
        if checked:
            fields[name] = checked
    fields["created"] = iso(now())
    if created_by is not None:
        fields[CREATED_BY] = check_name(CREATED_BY, created_by)
    if discovered_from is not None:
        fields[DISCOVERED_FROM] = rules.check_task_id(discovered_from)
    given = check_id(task_id) if task_id is not None else None
    if given is not None and given in wanted:
        raise UsageError(f"depends_on names the task itself ({given}): a task that waits on itself never runs")
    if body:
        body = body if body.endswith("\n") else body + "\n"

    store.ensure_state()
    store.refresh()  # the long part, outside the lock; other creators' files are in the index before they let go
    with fsutil.locked(os.path.join(store.state, CREATE_LOCK)):
        if store.index.in_memory:  # no shared index (a disk that cannot hold it): what others made needs a walk
            store.refresh()
        for candidate in [given] if given is not None else candidates(slug(fields["title"])):
            holder = store.index.holder_of(candidate)
            path = os.path.join(store.root, candidate + ".md")
            if holder is None:
                doc, data = _render(candidate, fields, body, path)
                if fsutil.create_new(path, data):
                    store.note_written(doc)
                    return summarize(doc.data, path, candidate + ".md", candidate), doc
                holder = candidate + ".md"
            if given is not None:
                raise TaskExists(f"id {given!r} is taken: {os.path.join(store.root, holder)} holds it or is named "
                                 "so; pick another id, or leave the id out and a free one is made from the title")  # fmt: skip
    raise AssertionError("candidates() never ends")  # pragma: no cover


def _render(task_id: str, fields: dict, body: str, path: str) -> tuple[TaskDoc, bytes]:
    """The document and bytes of a new task file, checked to read back as exactly `fields` (and `id`)."""
    data = {"id": task_id, **fields}
    for front in ("".join(taskfile.dump_field(key, value) for key, value in data.items()),
                  taskfile.dump_mapping(data)):  # fmt: skip
        text = "---\n" + front + "---\n" + ("\n" + body if body else "")
        raw = taskfile.check_writable(text, path)
        doc = taskfile.parse_text(text, path)
        if doc.data == data and doc.body == ("\n" + body if body else ""):
            summarize(doc.data, path, task_id + ".md", task_id)  # the queue can use it: TaskFileError if not
            return doc, raw
    raise TaskFileError(path, "these fields do not read back as they were given; nothing was written")


def follow_up_parent(data: dict, caller: str) -> str | None:
    """The task `caller` was holding when it filed this task (frontmatter `data`) as a follow-up, or None: a
    caller is not handed its own follow-up while that claim lives (claims/queue.py)."""
    parent = data.get(DISCOVERED_FROM)
    if isinstance(parent, str) and data.get(CREATED_BY) == caller:
        return parent
    return None
