"""The attempt rule, stated once: what counts as an attempt, how many are left, and the history a dead letter logs.

Every claim counts one attempt, as SQS counts receives: the count goes up when the task is claimed, whoever claims
it and however the claim ends. An attempt that ends without an outcome (a release, a lease that runs out, a
worker that dies or is killed) stays counted; complete and block end the task. The claim that would make it
max_attempts + 1 moves the task to blocked with reason max_attempts (the dead letter) instead, so a worker that
claims and releases forever stops there. Only bookkeeping claims (the built-in triage's) give their attempt back.
"""

from __future__ import annotations

from ..tasks import worklog

TYPE_CHECKING = False  # typing costs every CLI call 2 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Iterable

RULE = (
    "Every claim counts one attempt; a claim that ends without complete or block (a release, a lease that runs "
    "out, a worker that dies) stays counted, and the claim after max_attempts (default 3) moves the task to "
    "blocked with reason max_attempts (the dead letter) instead of claiming it."
)


def left(attempts: int, limit: int) -> int:
    """Claims a task may still take after `attempts` before the next one dead-letters it."""
    return max(0, limit - attempts)


def counted(attempts: int, limit: int) -> str:
    """'attempt 2 of 3, 1 left' (or 'the last of 3') for a claim or a release, as the CLI prints it."""
    remaining = left(attempts, limit)
    if remaining == 0:
        return f"attempt {attempts} of {limit}, the last: the next claim dead-letters it"
    return f"attempt {attempts} of {limit}, {remaining} left"


def history(events: Iterable[dict], task_id: str) -> list[dict]:
    """The attempts on `task_id` since its attempts were last reset, from its events: each a dict of `attempt`
    (the count the claim set), `caller`, `at` (the claim's time) and `ended` (how it ended; None: still open)."""
    attempts: list[dict] = []
    for event in events:
        if event.get("task") != task_id:
            continue
        kind = event.get("event")
        current = attempts[-1] if attempts and attempts[-1]["ended"] is None else None
        if kind in ("claimed", "taken_over"):
            if current is not None:
                how = "stranded (in_progress with no live claim)" if event.get("reason") == "stranded" else None
                current["ended"] = f"{how or 'its lease ran out'}; taken over by {event.get('caller')}"
            attempts.append({"attempt": event.get("attempts"), "caller": event.get("caller"), "at": event.get("ts"),
                             "ended": None})  # fmt: skip
        elif kind == "reopened":
            if current is not None:
                current["ended"] = "its lease ran out"
            if event.get("attempts") == 0:
                attempts.clear()
        elif current is not None:
            current["ended"] = _ending(kind, event, current)
    return attempts


def _ending(kind: object, event: dict, current: dict) -> str | None:
    """How an event ends the open attempt `current`, or None if it does not end it (a renewal, a restore)."""
    reason = event.get("reason")
    if kind == "released":
        given = f": {reason}" if reason else " (no reason given)"
        number = event.get("attempts")
        not_counted = isinstance(number, int) and isinstance(current["attempt"], int) and number < current["attempt"]
        return "released" + (", not counted" if not_counted else "") + given
    if kind == "abandoned":
        return f"abandoned: {reason}"
    if kind in ("completed", "blocked"):
        return f"{kind}: {event.get('text')}"
    if kind == "claim_ended":
        return f"claim ended: {reason}"
    return None


def dead_letter_entry(at: float, task_id: str, attempts: int, limit: int, tried: list[dict], last_ended: str,
                      last_holder: str | None) -> str:  # fmt: skip
    """The `## Worker log` entry of a dead letter: the count, who held the task last, each attempt and how it
    ended (the open one as `last_ended` says), and how a person gives it its attempts again."""
    text = (
        f"max_attempts: {attempts} attempt{'s' * (attempts != 1)} used, none ended with complete or block; last held "
        f"by {last_holder or 'nobody'}"
    )
    return worklog.format_entry(at, "hypervisor", "dead letter", text,
                                details=attempt_lines(task_id, tried, limit, last_ended))  # fmt: skip


def attempt_lines(task_id: str, tried: list[dict], limit: int, last_ended: str) -> list[str]:
    """The lines under a dead letter's entry: each attempt and how it ended (the open one: `last_ended`), then
    how a person gives the task its attempts again."""
    lines = []
    for item in tried:
        when = f" at {item['at']}" if item.get("at") else ""
        lines.append(f"attempt {item['attempt']} · {item['caller']}{when} · {item['ended'] or last_ended}")
    if not tried:
        lines.append("no claim of it is in the event log (it was cleared, or the attempts were set by hand)")
    lines.append(f"max_attempts is {limit}; to try again: `hypervisor reopen {task_id} --reset-attempts`")
    return lines


def release_entry(at: float, caller: str, attempts: int, limit: int, reason: str | None) -> str:
    """The `## Worker log` entry of a release that counts its attempt: who gave it back, why, and what is left."""
    text = (reason or "no reason given") + f" ({counted(attempts, limit)})"
    return worklog.format_entry(at, caller, "released", text)
