"""The pure decision of what a finished attempt means, from its task file, its claim and its events."""

from __future__ import annotations

from ..core import rules

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..claims.records import Claim


def decide(status: str, data: dict, claim: Claim | None, token: str,
           events: Callable[[], list[dict]]) -> tuple[str, str, str | None]:  # fmt: skip
    """(status, outcome or reason, commit) of an attempt that held `token`: `status` and `data` are the task
    file's status and frontmatter as read after the process ended, `claim` its claim record now, `events()` the
    task's events since the attempt started (read only if needed). "unfinished": the attempt still holds the claim."""
    if claim is not None and claim.token == token:
        return "unfinished", "", None
    found = events()
    commit = data.get("commit") if isinstance(data.get("commit"), str) else None
    if status == "done":
        return "done", last_text(found, "completed", "text") or "done", commit
    if status == "blocked":
        reason = last_text(found, "blocked", "text") or str(data.get("blocked_reason") or "blocked")
        if data.get("blocked_reason") == rules.DEAD_LETTER_REASON:
            return "dead_letter", last_text(found, "dead_letter", "text") or reason, None
        return "blocked", reason, None
    if status == "review" and last_text(found, "completed", "text") and last_text(found, "completed", "lands"):
        return "review", last_text(found, "completed", "text") or "done", commit  # completed; done once landed
    if claim is not None:
        return "lost", f"the claim was taken over by {claim.caller} (the lease expired)", None
    if rules.is_status_claimable(status):
        reason = last_text(found, "released", "reason")
        head, _, detail = (reason or "").partition(":")
        if head == rules.TRIAGED_REASON and detail.strip():  # the built-in triage's verdict, not a give-up
            return "triaged", detail.strip(), None
        return "released", f"released by the worker: {reason}" if reason else "released by the worker", None
    return "lost", f"the task is {status} with no claim: changed outside this run", None


def last_text(events: list[dict], kind: str, field: str) -> str | None:
    """The last non-blank `field` of the events of `kind`, or None."""
    for event in reversed(events):
        if event.get("event") == kind and isinstance(event.get(field), str) and event[field].strip():
            return event[field]
    return None
