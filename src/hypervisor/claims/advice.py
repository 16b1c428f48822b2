"""The refusals of the claim protocol: what happened, and a next step the tools accept (tests follow each one)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core import rules
from ..core.timeutil import humanize, iso, now

if TYPE_CHECKING:
    from ..tasks.task import TaskSummary
    from .records import Claim


def claim_step(task_id: str) -> str:
    """How to claim one task, for a person and for a model."""
    return f"`hypervisor claim {task_id} --caller NAME` (MCP: claim_next_task with task_id {task_id!r})"


def reopen_step(task_id: str) -> str:
    """How to put a finished, blocked or stranded task back in the queue, for a person and for a model."""
    return f"`hypervisor reopen {task_id}` (MCP: update_task with status 'active')"


def _by_hand(task_id: str, summary: TaskSummary) -> str:
    return (
        f"task {task_id} was set in_progress by hand (assignee {summary['assignee'] or 'none'}; no claim ever "
        f"counted an attempt on it), so it is left to that person; to put it in the queue, reopen it with "
        f"{reopen_step(task_id)}"
    )


def _from(wait: float) -> str:
    return f"from {iso(now() + wait)} (in {humanize(wait)}, a whole lease after its file last changed)"


def no_claim(task_id: str, summary: TaskSummary, stranded_wait: float) -> str:
    """A holder's change refused because no claim holds the task (lost in a restart, ended, or never made)."""
    status = summary["status"]
    if status == "in_progress" and stranded_wait == float("inf"):
        return "claim lost: no live claim holds it; " + _by_hand(task_id, summary)
    if status == "in_progress":
        when = _from(stranded_wait) if stranded_wait > 0 else "now"
        return (
            f"claim lost: task {task_id} has no live claim (its file says in_progress, but no claim holds it: "
            f"stranded); claim it again {when} with {claim_step(task_id)}, or free it at once with "
            f"`hypervisor reopen {task_id}`"
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


def unclaimable(task_id: str, summary: TaskSummary) -> str:
    """A claim refused because the task is finished, blocked or in review."""
    return (
        f"task {task_id} is {summary['status']}; only inbox or active tasks can be claimed: reopen it first with "
        f"{reopen_step(task_id)}, or claim another task"
    )


def stranded(task_id: str, summary: TaskSummary, wait: float) -> str:
    """A claim refused because a stranded task has not been left alone for a whole lease yet."""
    if wait == float("inf"):
        return _by_hand(task_id, summary) + ", or claim another task"
    holder = summary["assignee"] or "nobody"
    return (
        f"task {task_id} is in_progress but no claim holds it (stranded; last assigned to {holder}); it can be "
        f"claimed again {_from(wait)}, or a person can free it now with `hypervisor reopen {task_id}`; meanwhile "
        "claim another task"
    )


def held_by_other(task_id: str, claim: Claim, caller: str) -> str:
    return (
        f"task {task_id} is claimed by {claim.caller}, not by {caller}; pass the claim_token your own claim "
        "returned, or claim another task"
    )


def ended_by_file(task_id: str, status: str) -> str:
    """A renewal refused because a person marked the task finished in its file."""
    return (
        f"claim ended: task {task_id} was marked {status} in its file; stop work on it (to work on it again: "
        f"{reopen_step(task_id)}, then claim it)"
    )


def reopen_claimed(task_id: str, claim: Claim, at: float) -> str:
    left = claim.lease_expires_at - at
    return (
        f"task {task_id} is claimed by {claim.caller} until {iso(claim.lease_expires_at)} ({humanize(left)} left), "
        f"so it is not reopened: its holder can release it (`hypervisor release {task_id} --token T`), or reopen "
        "it once the lease has run out"
    )


def reopen_not_needed(task_id: str, status: str) -> str:
    return f"task {task_id} is {status}, already in the queue: there is nothing to reopen; claim it with " + claim_step(
        task_id
    )
