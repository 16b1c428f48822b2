"""Claim records in `<state>/claims/<id>.json` and the per-task lock, usable without the task store (hooks use it)."""

from __future__ import annotations

import os

from ..core import fsutil
from ..core.config import STATE_DIR as STATE_DIR  # the task root's state layout is core's: tasks/ locks with it too
from ..core.config import lock_path as lock_path
from ..core.config import state_dir as state_dir
from ..core.rules import MCP_CLAIM_TOOL, check_task_id
from ..core.timeutil import humanize, now

LOCK_WAIT_SECONDS = 5.0  # a hook gives up on a lock held this long rather than stall the agent
# The step every "this task is not yours" refusal offers (claims.advice writes the others; the hooks say these).
ANOTHER = f"claim another task (`hypervisor claim --caller NAME`; MCP: {MCP_CLAIM_TOOL} without task_id)"


def claim_path(state: str, task_id: str) -> str:
    return os.path.join(state, "claims", check_task_id(task_id) + ".json")


class Claim:
    """A claim as stored: who holds the task, under which token, until when, and what it replaced."""

    FIELDS = (
        "task_id", "token", "caller", "claimed_at", "lease_seconds", "lease_expires_at", "attempts", "path",
        "status_before", "assignee_before", "worker", "previous", "scope", "lands",
    )  # fmt: skip
    __slots__ = FIELDS

    def __init__(self, task_id: str, token: str, caller: str, claimed_at: float, lease_seconds: float,
                 lease_expires_at: float, attempts: int, path: str, status_before: str,
                 assignee_before: str | None = None, worker: str | None = None, previous: dict | None = None,
                 scope: list[str] | None = None, lands: str | None = None) -> None:  # fmt: skip
        self.task_id = task_id
        self.token = token
        self.caller = caller
        self.claimed_at = claimed_at
        self.lease_seconds = lease_seconds
        self.lease_expires_at = lease_expires_at
        self.attempts = attempts
        self.path = path
        self.status_before = status_before
        self.assignee_before = assignee_before
        self.worker = worker
        self.previous = previous
        self.scope = list(scope or [])
        self.lands = lands  # the branch the work must land on before the task is done (hypervisor run --land)

    def expired(self, at: float) -> bool:
        return self.lease_expires_at <= at

    def holder(self) -> str:
        """How the worker log and refusals name the holder: the caller, and the agent session if known."""
        return f"{self.caller} ({self.worker})" if self.worker and self.worker != self.caller else self.caller

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_json(cls, data: dict) -> Claim:
        return cls(**{key: value for key, value in data.items() if key in cls.FIELDS})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Claim) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"Claim({self.task_id!r}, caller={self.caller!r}, attempts={self.attempts})"


def token_problem(claim: Claim, token: str, at: float) -> str | None:
    """Why `token` does not hold `claim` (written for a model: what happened, what to do), or None if it does."""
    if token == claim.token:
        return None
    previous = claim.previous or {}
    if previous.get("token") and token == previous["token"]:
        ago = humanize(at - previous["lease_expires_at"])
        return (
            f"claim lost: lease expired {ago} ago, now held by {claim.caller}; stop work on task {claim.task_id} and "
            f"{ANOTHER}"
        )
    return (
        f"claim token does not match the live claim on task {claim.task_id} (held by {claim.caller}); "
        f"use the token your claim returned, or {ANOTHER}"
    )


def renewed(claim: Claim | None, token: str, lease_seconds: float | None = None,
            worker: str | None = None) -> Claim | None:  # fmt: skip
    """`claim` with its lease extended from now (and the worker noted) if `token` holds it, else None.

    A lease that ran out but was not taken over is renewed: the token is the fence, not the clock."""
    if claim is None or claim.token != token:
        return None
    claim.lease_seconds = lease_seconds or claim.lease_seconds
    claim.lease_expires_at = now() + claim.lease_seconds
    if worker and not claim.worker:
        claim.worker = worker
    return claim


def read_claim(state: str, task_id: str) -> Claim | None:
    """The claim record of a task, live or expired, or None."""
    try:
        data = fsutil.read_json(claim_path(state, task_id))
    except ValueError:
        return None  # a torn record cannot exist (atomic writes); treat garbage as no claim
    return parse_claim(data)


def parse_claim(data: object) -> Claim | None:
    """The Claim in a decoded record, or None if it is damaged: its holder is refused, and the task can be
    claimed again."""
    if not isinstance(data, dict) or not _well_formed(data):
        return None
    return Claim.from_json(data)


def _well_formed(data: dict) -> bool:
    number = (int, float)
    previous = data.get("previous")
    scope = data.get("scope", [])
    return (
        all(isinstance(data.get(name), str) for name in ("task_id", "token", "caller", "path", "status_before"))
        and all(isinstance(data.get(name), number) and not isinstance(data.get(name), bool)
                for name in ("claimed_at", "lease_seconds", "lease_expires_at", "attempts"))
        and (previous is None or (isinstance(previous, dict) and isinstance(previous.get("token", ""), str)
                                  and isinstance(previous.get("lease_expires_at", 0), number)))
        and isinstance(scope, list) and all(isinstance(glob, str) for glob in scope)
        and all(isinstance(data.get(name), (str, type(None))) for name in ("assignee_before", "worker", "lands"))
    )  # fmt: skip


def file_shows(state: str, claim: Claim) -> bool:
    """Whether the task file of `claim` says `status: in_progress` by its caller: a cheap look at two frontmatter
    lines (no YAML parser), for the hooks; True when the file cannot be read or says something unusual, since the
    queue's own reconcile makes the real comparison."""
    path = os.path.join(os.path.dirname(state), claim.path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(65536).decode("utf-8", "replace")
    except OSError:
        return True
    lines = head.lstrip("\ufeff").splitlines()
    if not lines or lines[0].rstrip() != "---":
        return True
    found: dict[str, str] = {}
    for line in lines[1:]:
        if line.rstrip() in ("---", "..."):
            break
        key, colon, value = line.partition(":")
        if colon and key in ("status", "assignee"):
            found[key] = value.split(" #", 1)[0].strip().strip("\"'")
    return found.get("status") == "in_progress" and found.get("assignee") == claim.caller


def write_claim(state: str, claim: Claim) -> None:
    fsutil.atomic_write_json(claim_path(state, claim.task_id), claim.to_json())


def drop_claim(state: str, task_id: str) -> None:
    try:
        os.unlink(claim_path(state, task_id))
    except FileNotFoundError:
        pass
