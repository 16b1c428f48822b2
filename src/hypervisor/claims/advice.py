"""The refusals of the claim protocol: what happened, and a next step the tools accept (tests/test_refusals.py
produces each one and follows its advice).

Steps are written one way throughout, for a person and a model both: a command in backticks (`hypervisor ...`, with
NAME and TOKEN standing for the caller's own name and claim token), then the same step as an MCP tool call in
parentheses (MCP: tool with key 'value', ...). A moment to wait for is written as `iso` writes it, rounded up to the
second, so a step taken at the time a refusal names is never early.

The claim records' own texts (records.token_problem) stay beside the records: the hooks, which may not load this
module, say them too.
"""

from __future__ import annotations

import math

from ..core import rules
from ..core.timeutil import humanize, iso, now
from .records import ANOTHER as ANOTHER  # "claim another task": the records' own texts (hook path) say it too

TYPE_CHECKING = False  # typing costs every CLI call 2 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..tasks.task import TaskSummary
    from .records import Claim


def moment(ts: float) -> str:
    """A time a step may be taken from, rounded up to the whole second `iso` shows: never earlier than `ts`."""
    return iso(math.ceil(ts))


def mcp(tool: str, *rest: str, **args: str) -> str:
    """An MCP tool call as the refusals write it: `MCP: update_task with id 'a', status 'active'`."""
    parts = [f"{key} {value!r}" for key, value in args.items()] + list(rest)
    return f"MCP: {tool}" + (" with " + ", ".join(parts) if parts else "")


def claim_step(task_id: str) -> str:
    """How to claim one task, for a person and for a model."""
    return f"`hypervisor claim {task_id} --caller NAME` ({mcp(rules.MCP_CLAIM_TOOL, task_id=task_id)})"


def reopen_step(task_id: str) -> str:
    """How to put a finished, blocked or stranded task back in the queue, for a person and for a model."""
    return f"`hypervisor reopen {task_id}` ({mcp('update_task', id=task_id, status='active')})"


# -- claiming -------------------------------------------------------------------------------------------------------
def already_claimed(task_id: str, claim: Claim, at: float) -> str:
    return (
        f"task {task_id} is already claimed by {claim.caller} until {moment(claim.lease_expires_at)} "
        f"({humanize(claim.lease_expires_at - at)} left); {ANOTHER}"
    )


def claimed_meanwhile(task_id: str, caller: str) -> str:
    """A claim lost to another claimer between the look and the record (another host, or a race on Redis)."""
    return f"task {task_id} was claimed meanwhile by {caller}; {ANOTHER}"


def unclaimable(task_id: str, summary: TaskSummary) -> str:
    """A claim refused because the task is finished, blocked or in review."""
    return (
        f"task {task_id} is {summary['status']}; only inbox or active tasks can be claimed: reopen it first with "
        f"{reopen_step(task_id)}, or {ANOTHER}"
    )


def _by_hand(task_id: str, summary: TaskSummary) -> str:
    return (
        f"task {task_id} was set in_progress by hand (assignee {summary['assignee'] or 'none'}; no claim ever "
        f"counted an attempt on it), so it is left to that person; to put it in the queue, reopen it with "
        f"{reopen_step(task_id)}"
    )


def _from(wait: float) -> str:
    return f"from {moment(now() + wait)} (in {humanize(math.ceil(wait))}, a lease after its file last changed)"


def stranded(task_id: str, summary: TaskSummary, wait: float) -> str:
    """A claim refused because a stranded task has not been left alone for a whole lease yet."""
    if wait == float("inf"):
        return f"{_by_hand(task_id, summary)}, or {ANOTHER}"
    holder = summary["assignee"] or "nobody"
    return (
        f"task {task_id} is in_progress but no claim holds it (stranded; last assigned to {holder}): claimable "
        f"again {_from(wait)} with {claim_step(task_id)}, or free it now with {reopen_step(task_id)}; meanwhile "
        f"{ANOTHER}"
    )


def waiting(task_id: str, blocking: Iterable[str]) -> str:
    """A claim refused because dependencies are not done or cancelled (or missing)."""
    blocking = list(blocking)
    missing = any(item.endswith("(missing)") for item in blocking)
    return (
        f"task {task_id} waits on unfinished dependencies: {', '.join(blocking)}; finish those first"
        + (" (a missing one: create it, or take it out of depends_on)" if missing else "")
        + f", or {ANOTHER}"
    )


def dead_lettered(task_id: str, attempts: int, limit: int) -> str:
    """A claim that found the task over max_attempts and moved it to blocked instead (the dead letter)."""
    return (
        f"task {task_id} failed {attempts} attempt{'s' * (attempts != 1)} (max_attempts {limit}) and was moved to "
        f"blocked (its worker log lists each attempt and how it ended); {ANOTHER}. "
        f"A person can give it all its attempts again with `hypervisor reopen {task_id} --reset-attempts`"
    )


def own_follow_up(task_id: str, parent: str) -> str:
    """A claim refused because its caller filed the task (create_task) while holding `parent`, and still holds it."""
    return (
        f"task {task_id} is a follow-up you filed while working on task {parent}: it is left to another worker while "
        f"you hold {parent}. Finish {parent} first (`hypervisor complete {parent} --token TOKEN --summary S`; "
        f"{mcp('complete_task', 'your claim_token', 'a summary', id=parent)}); after that you may claim it"
    )


def nothing_to_claim(scope: str) -> str:
    return f"nothing to claim{scope}: no task is ready (see `hypervisor preflight`)"


def nothing_to_run() -> str:
    """`run` and `preflight` on a batch none of whose tasks is ready (exit 3); the lines above it say why each is not."""
    return "nothing to run: no task of the batch is ready"


# -- a holder's changes ---------------------------------------------------------------------------------------------
def no_token(task_id: str) -> str:
    return (
        f"task {task_id}: give the claim token your claim returned (--token TOKEN, or claim_token in a tool call) "
        "or the caller that holds the claim (--caller NAME, or caller)"
    )


def no_claim(task_id: str, summary: TaskSummary, stranded_wait: float) -> str:
    """A holder's change refused because no claim holds the task (lost in a restart, ended, or never made)."""
    status = summary["status"]
    if status == "in_progress" and stranded_wait == float("inf"):
        return "claim lost: " + _by_hand(task_id, summary)
    if status == "in_progress":
        when = _from(stranded_wait) if stranded_wait > 0 else "now"
        return (
            f"claim lost: task {task_id} has no live claim (its file says in_progress, but no claim holds it: "
            f"stranded); claim it again {when} with {claim_step(task_id)}, or free it at once with "
            f"{reopen_step(task_id)}"
        )
    if rules.is_status_claimable(status):
        return (
            f"task {task_id} is not claimed (it is {status}); claim it first with {claim_step(task_id)}, then use "
            "the claim_token it returns"
        )
    return (
        f"task {task_id} is {status} and no claim holds it, so there is nothing to change; to work on it again, "
        f"reopen it: {reopen_step(task_id)}"
    )


def held_by_other(task_id: str, claim: Claim, caller: str) -> str:
    return (
        f"task {task_id} is claimed by {claim.caller}, not by {caller}; pass the claim_token your own claim "
        f"returned, or {ANOTHER}"
    )


def taken_over_meanwhile(task_id: str, holder: str | None = None) -> str:
    now_held = f", now held by {holder}" if holder else ""
    return f"claim lost: task {task_id} was taken over meanwhile{now_held}; stop work on it and {ANOTHER}"


def ended_by_file(task_id: str, status: str) -> str:
    """A holder's change refused because a person marked the task finished in its file (the claim is ended)."""
    return (
        f"claim ended: task {task_id} was marked {status} in its file; stop work on it (to work on it again: "
        f"reopen it with {reopen_step(task_id)}, then claim it)"
    )


def supervised_lost(task_id: str, status: str) -> str:
    """A supervised worker's claim is gone: it was started for that one task, so there is nothing else to do."""
    return (
        f"claim lost: task {task_id} has no live claim (it is {status}); stop: you were started for this task "
        "only, and the supervisor reads its outcome from the task file"
    )


def finish_with(task_id: str, status: str) -> str:
    """update_task asked to set done or blocked: those are outcomes, written (and logged) by complete and block."""
    if status == "done":
        step = f"`hypervisor complete {task_id} --token TOKEN --summary S` ("
        step += mcp("complete_task", "your claim_token", "a summary", id=task_id) + ")"
    else:
        step = f"`hypervisor block {task_id} --token TOKEN --reason R` ("
        step += mcp("block_task", "your claim_token", "a reason", id=task_id) + ")"
    return (
        f"task {task_id}: update_task does not set {status}, which logs an outcome: use {step}; if you hold no claim "
        f"on it, claim it first with {claim_step(task_id)}"
    )


def cannot_become(task_id: str, current: str, target: str) -> str:
    """update_task asked for a status the task cannot move to; names the ones update_task can set from here."""
    allowed = rules.TRANSITIONS.get(current, frozenset())
    settable = [
        s for s in rules.STATUSES
        if s in allowed and s not in ("done", "blocked") and (s != "in_progress" or rules.is_status_claimable(current))
    ]  # fmt: skip
    steps = ", ".join(f"{s} ({mcp('update_task', id=task_id, status=s)})" for s in settable)
    return f"task {task_id} is {current} and cannot become {target}; update_task can make it: {steps or 'nothing'}"


def supervised_other(task_id: str) -> str:
    """A supervised worker asked for another task than the one claimed for it."""
    return (
        f"you were started by the hypervisor supervisor for task {task_id}, which is already claimed for you: "
        f"work only on it; {rules.MCP_CLAIM_TOOL} hands you its claim ({mcp(rules.MCP_CLAIM_TOOL, task_id=task_id)})"
    )


# -- reopen ---------------------------------------------------------------------------------------------------------
def reopen_claimed(task_id: str, claim: Claim, at: float) -> str:
    left = claim.lease_expires_at - at
    return (
        f"task {task_id} is claimed by {claim.caller} until {moment(claim.lease_expires_at)} ({humanize(left)} left), "
        f"so it is not reopened: its holder can release it (`hypervisor release {task_id} --token TOKEN`; "
        f"{mcp('release_task', 'its claim_token', id=task_id)}), or anyone can reopen it from "
        f"{moment(claim.lease_expires_at)}, when the lease has run out, with {reopen_step(task_id)}"
    )


def reopen_not_needed(task_id: str, status: str, blocking: Iterable[str] = ()) -> str:
    blocking = list(blocking)
    text = f"task {task_id} is {status}, already in the queue: there is nothing to reopen; "
    if blocking:
        return text + f"it waits on unfinished dependencies: {', '.join(blocking)}; finish those first, or {ANOTHER}"
    return text + f"claim it with {claim_step(task_id)}"


def bad_reason(limit: int) -> str:
    return f"the reason (--reason R, or update_task's note) must be 1 to {limit} characters saying why it is reopened"
