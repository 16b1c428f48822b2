"""The claim-before-edit gate: may this tool call go ahead, and if not, the reason the model reads."""

from __future__ import annotations

import os

from ..claims import records as claims
from ..claims import workers
from ..claims.backend import FileClaims, open_claims
from ..core import rules
from ..core.timeutil import now
from .payload import ToolCall

TYPE_CHECKING = False  # typing costs a hook 4 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Mapping

CLAIM_TOOL = {host: rules.mcp_tool_name(host, rules.MCP_CLAIM_TOOL) for host in rules.MCP_TOOL_PREFIX}
CREATE_TOOL = {host: rules.mcp_tool_name(host, rules.MCP_CREATE_TOOL) for host in rules.MCP_TOOL_PREFIX}


class HookContext:
    """Where a hook call works: the project folder, the task state folder, the gate mode and the claim backend."""

    __slots__ = ("project_dir", "state", "gate", "backend", "_claims")

    def __init__(self, project_dir: str, state: str, gate: str, backend: str = "file") -> None:
        self.project_dir = project_dir
        self.state = state
        self.gate = gate
        self.backend = backend
        self._claims: FileClaims | None = None

    @property
    def claims(self) -> FileClaims:
        """The claim backend, opened on first use (most hook calls never need it)."""
        if self._claims is None:
            self._claims = open_claims(self.backend, self.state, light=True)
        return self._claims


class Verdict:
    """`allow`, `warn` (allowed, with a reason) or `deny` (with a reason)."""

    __slots__ = ("action", "reason")

    def __init__(self, action: str, reason: str = "") -> None:
        self.action = action
        self.reason = reason

    def __repr__(self) -> str:
        return f"Verdict({self.action!r}, {self.reason!r})"


ALLOW = Verdict("allow")


def is_worker(call: ToolCall, env: Mapping[str, str], gate: str) -> bool:
    """A `hypervisor:worker` subagent, a process started with HYPERVISOR_WORKER=1, or anyone under `gate: all`."""
    return gate == "all" or call.worker.agent_type == workers.WORKER_AGENT_TYPE or env.get(workers.ENV_WORKER) == "1"


def held_claim(state: str, call: ToolCall, env: Mapping[str, str]) -> tuple[str, str, bool] | None:
    """(task_id, token, from_env) of the claim this worker works under: its hook binding, else the supervisor's env."""
    bound = workers.bound(state, call.worker)
    if bound is not None:
        return bound[0], bound[1], False
    supervised = workers.supervised_claim(env)
    return (supervised[0], supervised[1], True) if supervised else None


def relative(path: str, project_dir: str) -> str:
    """`path` relative to the project with '/' separators, or the absolute path if it lies outside."""
    return _relative(os.path.realpath(path), os.path.realpath(project_dir))


def _relative(real: str, real_base: str) -> str:
    if _within(real, real_base):
        return os.path.relpath(real, real_base).replace(os.sep, "/")
    return real


def _within(real: str, real_base: str) -> bool:
    return real == real_base or real.startswith(real_base.rstrip(os.sep) + os.sep)


def check(call: ToolCall, env: Mapping[str, str], context: HookContext) -> Verdict:
    """The gate's answer for one pre-tool call."""
    if not call.is_edit or context.gate == "off" or not is_worker(call, env, context.gate):
        return ALLOW
    problem = _problem(call, env, context)
    if problem is None:
        return ALLOW
    return Verdict("warn" if context.gate == "warn" else "deny", "hypervisor: " + problem)


def _problem(call: ToolCall, env: Mapping[str, str], context: HookContext) -> str | None:
    reals = [os.path.realpath(path) for path in call.paths]
    project = os.path.realpath(context.project_dir)
    shown = _relative(reals[0], project)
    held = held_claim(context.state, call, env)
    if held is None:
        return (
            f"{call.worker.label} holds no claim, so it may not edit {shown}. Claim a task first with "
            f"{CLAIM_TOOL[call.host]}, then make the edit under that claim."
        )
    task_id, token, _ = held
    claim = context.claims.read(task_id)
    if claim is None:
        return (
            f"claim lost: your claim on task {task_id} has ended (completed, blocked or released), so you may "
            f"not edit {shown}. Claim a task again with {CLAIM_TOOL[call.host]} before editing."
        )
    lost = claims.token_problem(claim, token, now())
    if lost:
        return f"{lost}; the edit of {shown} was refused"
    state = os.path.realpath(context.state)
    for real in reals:
        if _within(real, state):
            return (
                f"{shown} is hypervisor's own state; change tasks through the task_manager tools "
                f"(complete_task, block_task, update_task), never by editing {claims.STATE_DIR}/"
            )
        if claim.scope:
            rel = _relative(real, project)
            if os.path.isabs(rel) or not rules.scope_allows(rel, claim.scope):
                return (
                    f"{rel} is outside the scope of task {task_id} ({', '.join(claim.scope)}). Edit only files "
                    "inside that scope; if the task needs more, block it with a reason naming the files. Work that "
                    f"is not this task's: file it with {CREATE_TOOL[call.host]} for another worker."
                )
    return None
