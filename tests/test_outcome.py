"""The pure decision of what a finished attempt means (supervisor/outcome.py), as a table."""

from __future__ import annotations

import pytest

from hypervisor.claims.records import Claim
from hypervisor.core import rules
from hypervisor.supervisor.outcome import decide

MINE, THEIRS = "tok-mine", "tok-theirs"


def claim(token: str, caller: str = "w2-abcd") -> Claim:
    return Claim("t1", token, caller, 0.0, 60.0, 60.0, 1, "t1.md", "active")


DONE = [{"event": "completed", "task": "t1", "text": "shipped it"}]
BLOCKED = [{"event": "blocked", "task": "t1", "text": "needs a key"}]
DEAD = [{"event": "dead_letter", "task": "t1", "text": "3 attempts, the last timed out"}]
RELEASED = [{"event": "released", "task": "t1", "reason": "out of scope"}, {"event": "released", "reason": " "}]

CASES = [
    # (file status, frontmatter, claim now, events) -> (status, text, commit)
    ("done", {"commit": "abc123"}, None, DONE, ("done", "shipped it", "abc123")),
    ("done", {"commit": 7}, None, [], ("done", "done", None)),
    ("blocked", {"blocked_reason": "waiting on review"}, None, BLOCKED, ("blocked", "needs a key", None)),
    ("blocked", {"blocked_reason": "waiting on review"}, None, [], ("blocked", "waiting on review", None)),
    ("blocked", {}, None, [], ("blocked", "blocked", None)),
    ("blocked", {"blocked_reason": rules.DEAD_LETTER_REASON}, None, DEAD,
     ("dead_letter", "3 attempts, the last timed out", None)),
    ("blocked", {"blocked_reason": rules.DEAD_LETTER_REASON}, None, [],
     ("dead_letter", rules.DEAD_LETTER_REASON, None)),
    ("active", {}, None, RELEASED, ("released", "released by the worker: out of scope", None)),
    ("active", {}, None, [], ("released", "released by the worker", None)),
    ("active", {}, None, [{"event": "released", "task": "t1", "reason": "triaged: assignee=agent, triage=automatable"}],
     ("triaged", "assignee=agent, triage=automatable", None)),
    ("active", {}, None, [{"event": "released", "task": "t1", "reason": "triaged"}],
     ("released", "released by the worker: triaged", None)),
    ("in_progress", {}, claim(MINE), DONE, ("unfinished", "", None)),
    ("done", {"commit": "abc123"}, claim(MINE), DONE, ("unfinished", "", None)),
    ("in_progress", {}, claim(THEIRS), [], ("lost", "the claim was taken over by w2-abcd (the lease expired)", None)),
    ("in_progress", {}, None, [], ("lost", "the task is in_progress with no claim: changed outside this run", None)),
]  # fmt: skip


@pytest.mark.parametrize(("status", "data", "held", "events", "expected"), CASES)
def test_decide(status, data, held, events, expected) -> None:
    assert decide(status, data, held, MINE, lambda: events) == expected


def test_still_claimed_reads_no_events() -> None:
    def events() -> list[dict]:
        raise AssertionError("the events of an attempt that still holds its claim are not read")

    assert decide("in_progress", {}, claim(MINE), MINE, events) == ("unfinished", "", None)
