"""The post-tool log: bind a new claim to its worker, renew the holder's lease, journal the files it edits."""

from __future__ import annotations

import os

from ..claims import records as claims
from ..claims import workers
from ..core import rules
from ..core.errors import HookInputError
from .gate import HookContext, held_claim, relative
from .payload import ToolCall

TYPE_CHECKING = False  # typing costs a hook 4 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Mapping

CLAIMING_TOOLS = rules.MCP_CLAIMING_TOOLS


def track(call: ToolCall, env: Mapping[str, str], context: HookContext) -> None:
    """Everything the post hook records for one finished tool call; nothing at all for a non-holder."""
    state = context.state
    if not os.path.isdir(state):
        return
    if call.task_tool in CLAIMING_TOOLS and not call.failed:
        claimed = call.response_object() or {}
        task_id, token = claimed.get("id"), claimed.get("claim_token")
        if isinstance(task_id, str) and isinstance(token, str):
            workers.bind(state, call.worker, task_id, token)
    held = held_claim(state, call, env)
    if held is None:
        return
    task_id, token, from_env = held
    claim = context.claims.renew_unlocked(task_id, token, worker=call.worker.label)
    if claim is None:
        if not from_env:
            workers.unbind(state, call.worker)  # completed, blocked, released or taken over: gate it again
        return
    files = [] if call.failed else [relative(path, context.project_dir) for path in call.paths]
    workers.record_call(state, task_id, token, call.raw_tool, files, bool(call.failed))
    if not claims.file_shows(state, claim):
        _reconcile(state, task_id, context)


def _reconcile(state: str, task_id: str, context: HookContext) -> None:
    """Write back a task file that no longer shows its live claim (an editor saved an old buffer). Rare, so the
    task store and its YAML parser, which a hook never loads otherwise, are loaded only here: from site-packages,
    which a hook started with `python -S` (as hooks.json starts it) looks in only now."""
    try:
        import yaml  # noqa: F401
    except ImportError:
        import site

        site.main()
    try:
        from ..claims.queue import TaskQueue
        from ..tasks.store import TaskStore
    except ImportError as error:
        raise HookInputError(
            f"the file of task {task_id} does not show its live claim, and this Python cannot load the task store "
            f"to write it back ({error}); the next `hypervisor list` or renewal does"
        ) from None
    TaskQueue(TaskStore(os.path.dirname(state)), claims=context.claims).reconcile(task_id)
