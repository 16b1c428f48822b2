"""What landing does to a task its holder completed under `lands` (status `review`): `done` once its work is on the
branch, or back to `active` with a `## Landing` entry (the dead letter once it used its max_attempts)."""

from __future__ import annotations

from ..core import rules
from ..core.errors import ClaimRefused
from ..core.timeutil import iso, now
from ..tasks import worklog

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..tasks.task import TaskSummary
    from ..tasks.taskfile import TaskDoc
    from .queue import TaskQueue

HEADING = "## Landing"
TAIL_LINES = 40


def landed(queue: TaskQueue, task_id: str, branch: str, commit: str, who: str) -> dict:
    """A task in review whose work is on `branch` at `commit`: done, with a worker-log line saying where."""

    def patch(summary: TaskSummary, doc: TaskDoc) -> dict:
        _check_review(task_id, summary)
        at = now()
        doc.set("status", "done")
        doc.set("completed", iso(at))
        doc.set("landed_commit", commit)
        doc.set("modified", iso(at))
        text = f"landed on {branch} at {commit[:12]}"
        doc.append_to_section(worklog.HEADING, worklog.format_entry(at, who, "landed", text, commit=commit))
        return {"id": task_id, "status": "done", "attempts": summary["attempts"]}

    result = _rewrite(queue, task_id, patch)
    queue.event("landed", task_id, caller=who, branch=branch, commit=commit)
    return result


def turn_back(queue: TaskQueue, task_id: str, what: str, detail: str, who: str) -> dict:
    """A task in review whose work did not land (`what` failed; `detail` is the `## Landing` entry's body): back
    to `active` for its next attempt, or, once it has used max_attempts, blocked with reason max_attempts (the dead
    letter, as a worker that ends without an outcome). The attempt stays counted."""
    limit = queue.config.max_attempts

    def patch(summary: TaskSummary, doc: TaskDoc) -> dict:
        _check_review(task_id, summary)
        at = now()
        dead = summary["attempts"] >= limit
        doc.set("status", "blocked" if dead else "active")
        doc.remove("assignee")
        if dead:
            doc.set("blocked_reason", rules.DEAD_LETTER_REASON)
        doc.set("modified", iso(at))
        doc.append_to_section(HEADING, f"- **{iso(at)}** · {who} · **{what}**\n{detail.rstrip()}")
        left = f"; all {limit} attempts used" if dead else f"; attempt {summary['attempts'] + 1} of {limit} follows"
        log = f"not landed: {what}{left} (see ## Landing)"
        label = f"blocked: {rules.DEAD_LETTER_REASON}" if dead else "reopened"
        doc.append_to_section(worklog.HEADING, worklog.format_entry(at, who, label, log))
        return {"id": task_id, "status": doc.data["status"], "attempts": summary["attempts"], "dead_letter": dead}

    result = _rewrite(queue, task_id, patch)
    kind = "dead_letter" if result["dead_letter"] else "reopened"
    queue.event(kind, task_id, caller=who, attempts=result["attempts"], reason=f"not landed: {what}")
    return result


def output_tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a command's output, as an indented fenced block for a `## Landing` entry."""
    kept = text.rstrip("\n").splitlines()[-lines:] or ["(no output)"]
    fence = "````" if any(line.lstrip().startswith("```") for line in kept) else "```"
    return "\n".join(["  " + fence, *("  " + line for line in kept), "  " + fence])


def _check_review(task_id: str, summary: TaskSummary) -> None:
    if summary["status"] != "review":
        raise ClaimRefused(f"task {task_id} is {summary['status']}, no longer review: changed outside the run, so "
                           "its landing was left as it is")  # fmt: skip


def _rewrite(queue: TaskQueue, task_id: str, patch) -> dict:
    known = queue.store.find(task_id)
    with queue.store.task_lock(task_id):
        claim = queue.read_claim(task_id)
        if claim is not None and not claim.expired(now()):
            raise ClaimRefused(f"task {task_id} is claimed by {claim.caller}: its landing was left as it is")
        return queue.store.rewrite_locked(known, patch)
