"""The `task_manager` MCP server: the queue's nine tools over stdio; the only module that imports `mcp`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import ToolAnnotations
from pydantic import Field, ValidationError

from .. import __version__
from ..claims import advice, recovery, views, workers
from ..claims import attempts as attempt_rule
from ..claims.queue import TaskQueue
from ..core import fsutil, limits, rules
from ..core.errors import ClaimRefused, HypervisorError, InvalidTaskId, NothingToClaim, UsageError, storage_error
from ..core.limits import quote
from ..core.timeutil import iso, now
from ..tasks import creation

if TYPE_CHECKING:
    from ..claims.records import Claim
    from ..tasks.task import TaskSummary
    from ..tasks.taskfile import TaskDoc

SERVER_NAME = rules.MCP_SERVER
TOOL_NAMES = rules.MCP_TOOLS  # each a function below, named so (tests/test_mcp_server.py holds the two together)

INSTRUCTIONS = (
    "A shared queue of markdown tasks worked by several agents at once. Claim a task before working on it "
    "(claim_next_task), keep the claim_token it returns, and end with complete_task or block_task using that token. "
    "Never edit a task file by hand; never work on a task you have not claimed. Work you find outside your task's "
    "scope is filed with create_task for another worker, never claimed by you."
)

# Every string argument of every tool, by name: its limit, which its description states and `check_arguments`
# enforces (tests/test_mcp_limits.py holds the two together, tool by tool).
ID_RULE = f"1-{rules.TASK_ID_MAX} letters, digits, '.', '_' or '-'."
ONE_LINE = {"caller": limits.NAME_MAX, "assignee": limits.NAME_MAX, "project": limits.NAME_MAX,
            "claim_token": limits.TOKEN_MAX, "title": limits.TITLE_MAX}  # fmt: skip
TEXT = {"summary": limits.SUMMARY_MAX, "reason": limits.REASON_MAX, "note": limits.NOTE_MAX, "body": limits.BODY_MAX}
COMMIT_RULE = f"{limits.COMMIT_MIN}-{limits.COMMIT_MAX} hex digits."
BATCH_RULE = f"At most {limits.BATCH_MAX:,} ids, each {ID_RULE}"
DEPENDS_RULE = f"At most {limits.DEPENDS_MAX:,} ids, each {ID_RULE}"
SCOPE_RULE = f"At most {limits.SCOPE_MAX:,} globs, each {limits.describe(limits.GLOB_MAX, one_line=True).lower()}"


def described(text: str, argument: str) -> str:
    """An argument's description with its limit added."""
    if argument in ONE_LINE:
        return f"{text} {limits.describe(ONE_LINE[argument], one_line=True)}"
    return f"{text} {limits.describe(TEXT[argument])}"


Status = Literal[rules.STATUSES]  # type: ignore[valid-type]  # Literal[("a", "b")] is Literal["a", "b"]
TaskId = Annotated[
    str, Field(description=f"The task's id (its file name without .md, unless the file sets id:): {ID_RULE}")
]
TOKEN_TEXT = "The claim_token that claim_next_task returned. Needed to change a claimed task."
CALLER_TEXT = "Your worker name. May stand in for claim_token when you hold the live claim yourself."
Token = Annotated[str | None, Field(description=described(TOKEN_TEXT, "claim_token"))]
Caller = Annotated[str | None, Field(description=described(CALLER_TEXT, "caller"))]

CLAIM_DESCRIPTION = (
    "Claim a task atomically: exactly one caller wins. Returns the task plus claim_token, lease_expires_at, "
    "attempts, attempts_left and max_attempts.\n\nKeep the claim_token: complete_task, block_task, release_task "
    "and update_task need it. If this fails, do not retry in a loop: claim another task or stop.\n\n"
    f"Attempts: {attempt_rule.RULE}"
)
RELEASE_DESCRIPTION = (
    "Give your claimed task back to the queue unfinished, for someone else to pick up. The attempt stays counted; "
    f"returns attempts, attempts_left and max_attempts.\n\nAttempts: {attempt_rule.RULE}"
)

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)
WRITES = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False)


def check_arguments(**arguments: object) -> None:
    """Refuse a tool's string argument (by its name; None: not given) outside its limit: a HypervisorError naming
    the argument, the problem and what is allowed, quoting at most limits.QUOTE_MAX characters of the value."""
    for name, value in arguments.items():
        if value is None:
            continue
        if name in ("id", "task_id"):
            _check_id(name, value)
        elif name in ("batch", "depends_on"):
            limits.check_count(name, value, limits.BATCH_MAX if name == "batch" else limits.DEPENDS_MAX, "task ids")
            for index, item in enumerate(value):  # type: ignore[arg-type]  # check_count: a list
                _check_id(f"{name}[{index}]", item)
        elif name == "scope":
            limits.check_count(name, value, limits.SCOPE_MAX, "globs")
            for index, item in enumerate(value):  # type: ignore[arg-type]
                limits.check_text(f"{name}[{index}]", item, limits.GLOB_MAX, one_line=True)
        elif name == "commit":
            limits.check_commit(name, value)
        elif name in ONE_LINE:
            limits.check_text(name, value, ONE_LINE[name], one_line=True)
        else:
            limits.check_text(name, value, TEXT[name])


def _check_id(name: str, value: object) -> None:
    try:
        rules.check_task_id(value)
    except InvalidTaskId as error:
        raise InvalidTaskId(f"{name}: {error}") from None


def arguments_refused(error: ValidationError, shown: int = 3) -> str:
    """The SDK's refusal of arguments that do not fit a tool's input schema (a wrong type, a number out of range),
    in a few lines: what is wrong with the first `shown` of them, each value quoted short, and how many more."""
    problems = error.errors(include_url=False)
    lines = []
    for problem in problems[:shown]:
        where = _location(problem["loc"])
        if problem["type"] == "missing":
            lines.append(f"argument {where} is missing: it is required")
        else:
            got = quote(problem.get("input"), limit=limits.QUOTE_MAX // 2)
            lines.append(f"argument {where}: {problem['msg'][:160]}, not {got}")  # pydantic's words, not the value
    if len(problems) > shown:
        lines.append(f"and {len(problems) - shown:,} more problems like these")
    return "; ".join(lines) + ". The tool's input schema says what each argument takes"


def _location(loc: tuple) -> str:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    return text if len(text) <= 60 else quote(text, limit=60)


class _Server(MCPServer):
    """MCPServer whose refusals of a call it cannot even start (an unknown tool, arguments that do not fit the
    input schema) are short and in our words: pydantic's text lists every error, with no bound on how many."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        if name not in TOOL_NAMES:
            raise ToolError(f"there is no tool {quote(name)}; the tools are {', '.join(TOOL_NAMES)}")
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise
        except ToolError as error:
            if not isinstance(error.__cause__, ValidationError):
                raise
            raise ToolError(f"Error executing tool {name}: {arguments_refused(error.__cause__)}") from error.__cause__


def _for_model(error: HypervisorError) -> ToolError:
    """A refusal as a tool error whose text tells the model what to do next."""
    text = str(error)
    if isinstance(error, NothingToClaim):
        text += ". Stop: there is no work for you; report that the queue is empty."
    return ToolError(text)


class _Queue:
    """The queue the tools use, opened on first use: a project with no task root yet still gets a server whose
    every call says how to make one, and works once it exists."""

    def __init__(self, source: TaskQueue | Callable[[], TaskQueue]) -> None:
        self._queue = source if isinstance(source, TaskQueue) else None
        self._open = source

    def __getattr__(self, name: str) -> Any:
        if self._queue is None:
            self._queue = self._open()
        return getattr(self._queue, name)


def dispatch_update(queue: TaskQueue, task_id: str, token: str | None = None, caller: str | None = None,
                    status: str | None = None, assignee: str | None = None, priority: int | None = None,
                    note: str | None = None) -> dict:  # fmt: skip
    """update_task as the seed server had it: change a task's status, assignee or priority, or add a note; a
    claimed task needs its holder.

    Status `in_progress` claims the task for `caller` (atomically, as `claim`); `active`/`inbox` on a claimed
    task releases it; `done` and `blocked` must go through complete and block, which log the outcome.
    """
    if status is not None and status not in rules.STATUSES:
        raise UsageError(f"task {task_id}: status {status!r} is not one of {', '.join(rules.STATUSES)}")
    if priority is not None and (isinstance(priority, bool) or priority not in rules.PRIORITIES):
        raise UsageError(f"task {task_id}: priority {priority!r} is not allowed: use an integer 0 (highest) to 4")
    if status in ("done", "blocked"):
        raise ClaimRefused(advice.finish_with(task_id, status))
    result: dict = {"id": task_id}
    claim = queue.read_claim(task_id)
    fsutil.pause_point("update-read")  # tests stop here to claim the task meanwhile
    if status == "in_progress" and (claim is None or claim.expired(now())) and not token:
        if not caller:
            raise UsageError(f"task {task_id}: name the caller to claim it (status in_progress claims the task)")
        claimed = queue.claim_next(caller, task_id=task_id)
        token, claim = claimed["claim_token"], queue.read_claim(task_id)
        result.update(claim_token=token, lease_expires_at=claimed["lease_expires_at"], attempts=claimed["attempts"])
        status = None
    if status in ("active", "inbox") and claim is not None and not claim.expired(now()):
        queue.release(task_id, token=token, caller=caller, reason="update_task", status=status)
        claim, status = None, None
    if status in ("active", "inbox") and queue.store.find(task_id)["status"] in recovery.REOPENABLE:
        reopened = queue.reopen(task_id, reason=" ".join(note.split()) if note else None, who=caller)
        result.update(attempts=reopened["attempts"], attempts_left=reopened["attempts_left"])
        claim, note = None, None
        status = None if status == "active" else status
    ended: list[Claim] = []

    def change(summary: TaskSummary, doc: TaskDoc, held: Claim | None) -> dict:
        ended.clear()
        if status is not None and status != summary["status"]:
            if not rules.may_become(summary["status"], status):
                raise ClaimRefused(advice.cannot_become(task_id, summary["status"], status))
            doc.set("status", status)
            if held is not None and status != "in_progress":
                ended.append(held)
        if assignee is not None:
            doc.set("assignee", assignee)
        if priority is not None:
            doc.set("priority", priority)
        if note:
            who = held.holder() if held else (caller or "someone")
            doc.append_to_section("## Notes", f"- {iso(now())} {who}: {' '.join(note.split())}")
        if doc.changed or note:
            doc.set("modified", iso(now()))
        return {**result, "status": doc.data.get("status", summary["status"])}

    def settle(answer: dict, held: Claim | None) -> dict:
        for claim in ended:
            queue.end(claim)
        queue.event("updated", task_id, caller=held.caller if held else caller,
                    fields={k: v for k, v in (("status", status), ("assignee", assignee), ("priority", priority),
                                              ("note", note)) if v is not None})  # fmt: skip
        return answer

    if claim is not None:
        return queue.edit(task_id, change, token=token, caller=caller, settle=settle)
    known = queue.store.find(task_id)
    with queue.store.task_lock(task_id):
        current = queue.read_claim(task_id)
        if current is not None and not current.expired(now()):
            raise ClaimRefused(advice.claimed_meanwhile(task_id, current.caller))
        answer = queue.store.rewrite_locked(known, lambda summary, doc: change(summary, doc, None))
        return settle(answer, None)


def build_server(queue: TaskQueue | Callable[[], TaskQueue], env: Mapping[str, str] | None = None) -> MCPServer:
    """An MCPServer whose tools call `queue` (or the queue a callable opens on first use, raising HypervisorError
    until it can); every HypervisorError becomes a tool error, once, here.

    Started inside a supervised worker (`env` holds HYPERVISOR_TASK_ID and HYPERVISOR_CLAIM_TOKEN), claim_next_task
    hands over the claim the supervisor made for it instead of claiming anything else."""
    supervised = workers.supervised_claim(os.environ if env is None else env)
    # WARNING: a refusal is an answer to the model, not something for the MCP log (INFO logs each one).
    server = _Server(SERVER_NAME, instructions=INSTRUCTIONS, version=__version__, log_level="WARNING")
    queue = _Queue(queue)

    def checked(**arguments: object) -> None:
        """check_arguments, its refusal a tool error."""
        try:
            check_arguments(**arguments)
        except HypervisorError as error:
            raise _for_model(error) from None

    def call(function: str | Callable, *args: Any, **kwargs: Any) -> Any:
        """Run a queue method (by name) or a function; a refusal becomes a tool error."""
        try:
            if isinstance(function, str):
                function = getattr(queue, function)
            return function(*args, **kwargs)
        except HypervisorError as error:
            raise _for_model(error) from None
        except OSError as error:
            raise _for_model(storage_error(error)) from None

    @server.tool(annotations=READ_ONLY)
    def list_tasks(
        status: Annotated[Status | None, Field(description="Only tasks in this status.")] = None,
        project: Annotated[str | None, Field(description=described("Only tasks of this project.", "project"))] = None,
        assignee: Annotated[
            str | None, Field(description=described("Only tasks assigned to this name.", "assignee"))
        ] = None,
        ready: Annotated[bool, Field(description="Only tasks that can be claimed now, in queue order.")] = False,
        limit: Annotated[int, Field(description="At most this many tasks, 1 to 1000.", ge=1, le=1000)] = 50,
    ) -> dict:
        """List tasks in queue order (priority, then created, then id), with their status, project and assignee."""
        checked(project=project, assignee=assignee)

        def run() -> dict:
            items, _ = views.listing(queue, [status] if status else (), project=project, assignee=assignee, ready=ready)
            return {"count": len(items), "tasks": items[:limit]}

        return call(run)

    @server.tool(annotations=READ_ONLY)
    def get_task(id: TaskId) -> dict:  # noqa: A002 - the public argument name
        """Get one task: its fields, its markdown body, and whether it is claimed and by whom."""
        checked(id=id)

        def run() -> dict:
            summary, doc = queue.store.read(queue.store.find(id))
            return {**summary, "body": doc.body, "claim": views.claim_view(queue, id)}

        return call(run)

    @server.tool(annotations=WRITES, description=CLAIM_DESCRIPTION)
    def claim_next_task(
        caller: Annotated[
            str, Field(description=described("Your worker name, e.g. worker-3. Recorded as the assignee.", "caller"))
        ],
        task_id: Annotated[
            str | None, Field(description=f"Claim this task instead of the next ready one: {ID_RULE}")
        ] = None,
        project: Annotated[
            str | None, Field(description=described("Claim the next ready task of this project.", "project"))
        ] = None,
        batch: Annotated[
            list[str] | None, Field(description=f"Claim the next ready task among these ids only. {BATCH_RULE}")
        ] = None,
    ) -> dict:
        checked(caller=caller, task_id=task_id, project=project, batch=batch)
        if supervised is not None:
            if task_id not in (None, supervised[0]):
                raise ToolError(advice.supervised_other(supervised[0]))
            return call("handed_over", *supervised)
        return call("claim_next", caller, task_id=task_id, project=project, ids=batch)

    @server.tool(annotations=WRITES)
    def update_task(
        id: TaskId,  # noqa: A002
        claim_token: Token = None,
        caller: Caller = None,
        status: Annotated[
            Status | None,
            Field(
                description="New status. in_progress claims the task for caller; use complete_task/block_task "
                "to finish or block."
            ),  # fmt: skip
        ] = None,
        assignee: Annotated[str | None, Field(description=described("New assignee.", "assignee"))] = None,
        priority: Annotated[int | None, Field(description="New priority, 0 (highest) to 4.", ge=0, le=4)] = None,
        note: Annotated[
            str | None, Field(description=described("A note to append under '## Notes' in the task body.", "note"))
        ] = None,
    ) -> dict:
        """Change a task's status, assignee or priority, or add a note. A claimed task needs its claim_token."""
        checked(id=id, claim_token=claim_token, caller=caller, assignee=assignee, note=note)
        return call(dispatch_update, queue, id, token=claim_token, caller=caller, status=status, assignee=assignee,
                    priority=priority, note=note)  # fmt: skip

    @server.tool(annotations=WRITES)
    def complete_task(
        id: TaskId,  # noqa: A002
        summary: Annotated[
            str, Field(description=described("What you did, in one or two sentences, for the worker log.", "summary"))
        ],
        claim_token: Token = None,
        caller: Caller = None,
        commit: Annotated[
            str | None, Field(description=f"The commit SHA holding your work, if any: {COMMIT_RULE}")
        ] = None,
    ) -> dict:
        """Mark your claimed task done and log the summary in its body. Only after the work is really finished."""
        checked(id=id, summary=summary, claim_token=claim_token, caller=caller, commit=commit)
        return call("complete", id, token=claim_token, caller=caller, summary=summary, commit=commit)

    @server.tool(annotations=WRITES)
    def block_task(
        id: TaskId,  # noqa: A002
        reason: Annotated[
            str, Field(description=described("What stops the task, so a person can act on it.", "reason"))
        ],
        claim_token: Token = None,
        caller: Caller = None,
    ) -> dict:
        """Mark your claimed task blocked with a reason. Use it at the first real obstacle instead of retrying."""
        checked(id=id, reason=reason, claim_token=claim_token, caller=caller)
        return call("block", id, token=claim_token, caller=caller, reason=reason)

    @server.tool(annotations=WRITES, description=RELEASE_DESCRIPTION)
    def release_task(id: TaskId, claim_token: Token = None, caller: Caller = None) -> dict:  # noqa: A002
        checked(id=id, claim_token=claim_token, caller=caller)
        return call("release", id, token=claim_token, caller=caller, reason="release_task")

    @server.tool(annotations=READ_ONLY)
    def get_index_stats(
        include_projects: Annotated[bool, Field(description="Add counts per project.")] = False,
    ) -> dict:
        """Count tasks by status, plus how many are ready, claimed, and invalid."""
        return call(views.stats, queue, by_project=include_projects)

    @server.tool(annotations=WRITES)
    def create_task(
        title: Annotated[
            str, Field(description=described("What is to be done, in a few words; the id is made from it.", "title"))
        ],
        project: Annotated[str | None, Field(description=described("The project it belongs to.", "project"))] = None,
        priority: Annotated[int | None, Field(description="0 (highest) to 4; default 2.", ge=0, le=4)] = None,
        depends_on: Annotated[
            list[str] | None, Field(description=f"Tasks that must be done before this one. {DEPENDS_RULE}")
        ] = None,
        scope: Annotated[
            list[str] | None,
            Field(description=f"Where its worker may edit, as globs such as 'src/auth/**'. {SCOPE_RULE}"),
        ] = None,
        body: Annotated[
            str | None,
            Field(description=described("What you found, where, and what done looks like (markdown).", "body")),
        ] = None,
        caller: Annotated[
            str | None,
            Field(description=described("Your worker name: the new task records it and the task you hold.", "caller")),
        ] = None,
    ) -> dict:
        """File a follow-up: a new task, status inbox, for work you found outside your own task's scope.

        It is for another worker: do not claim it or work on it yourself (while you hold the claim you filed it
        under, it is not handed to you), and go on with your own task. Returns the new task with its id.
        """
        checked(title=title, project=project, depends_on=depends_on, scope=scope, body=body, caller=caller)

        def run() -> dict:
            creator, parent = (caller.strip() or None) if caller else None, None
            if supervised is not None:  # the supervisor's claim is the one this worker works under
                held = queue.read_claim(supervised[0])
                parent, creator = supervised[0], held.caller if held else creator
            elif creator is not None:
                mine = [claim for claim in queue.live_claims().values() if claim.caller == creator]
                parent = max(mine, key=lambda claim: claim.claimed_at).task_id if mine else None
            summary, doc = creation.create(
                queue.store, title, project=project, priority=priority, depends_on=depends_on or (),
                scope=scope or (), status="inbox", body=body or "", created_by=creator, discovered_from=parent,
            )  # fmt: skip
            queue.event("created", summary["id"], path=summary["path"], caller=creator, discovered_from=parent)
            missing = [dep for dep in summary["depends_on"] if dep not in queue.store.indexed_statuses([dep])]
            answer = {**summary, "claim": None, "frontmatter": doc.data, "body": doc.body}
            if missing:
                answer["missing_dependencies"] = missing  # it waits until tasks with these ids exist and are done
            return answer

        return call(run)

    return server


def serve(queue: TaskQueue | Callable[[], TaskQueue]) -> None:
    """Serve the tools on stdio until the client closes the connection."""
    build_server(queue).run("stdio")
