"""The shared queue: leased, token-fenced claims on store tasks, their transitions, and the event log."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Iterator

from ..core import fsutil, rules
from ..core.config import Config
from ..core.errors import ClaimRefused, NothingToClaim, TaskNotFound, UsageError
from ..core.timeutil import humanize, iso, now
from ..tasks import worklog
from ..tasks.store import TaskStore
from ..tasks.task import TaskSummary
from ..tasks.taskfile import TaskDoc
from . import records as claims
from . import workers
from .backend import FileClaims, open_claims, resolve_backend
from .records import Claim

INDEX_MAX_AGE = 1.0


class TaskQueue:
    """Claim, renew, release, complete and block tasks of one store; every transition goes to the event log."""

    def __init__(self, store: TaskStore, config: Config | None = None, claims: FileClaims | None = None) -> None:
        self.store = store
        self.config = config or Config()
        self.host = socket.gethostname()
        self.claims = claims or open_claims(resolve_backend(None, self.config.backend), store.state)

    # -- claim records ------------------------------------------------------------------------------------------
    def read_claim(self, task_id: str) -> Claim | None:
        """The claim record of a task, live or expired, or None."""
        return self.claims.read(task_id)

    def claim_records(self) -> dict[str, Claim]:
        """Every claim record by task id (live or expired)."""
        return self.claims.records()

    def live_claims(self) -> dict[str, Claim]:
        """Claims whose lease has not expired, by task id."""
        at = now()
        return {task_id: claim for task_id, claim in self.claim_records().items() if not claim.expired(at)}

    def drop_claim(self, task_id: str, token: str | None) -> None:
        """End the claim `token` holds; ClaimRefused if another holder took it over meanwhile."""
        if not self.claims.drop(task_id, token):
            current = self.read_claim(task_id)
            holder = f", now held by {current.caller}" if current else ""
            raise ClaimRefused(f"claim lost: task {task_id} was taken over meanwhile{holder}; stop work on it")

    def event(self, kind: str, task_id: str, **fields: object) -> None:
        """Record one transition in the event log (events.jsonl, or the Redis stream)."""
        self.claims.event({"ts": iso(now()), "event": kind, "task": task_id, **fields})

    def events(self, since: object = None) -> list[dict]:
        """The transitions recorded after the cursor `since` (from `events_cursor`), or all of them."""
        return self.claims.events(since)

    def events_cursor(self) -> object:
        return self.claims.events_cursor()

    # -- the ready queue ----------------------------------------------------------------------------------------
    def ready(self, project: str | None = None, ids: Iterable[str] | None = None,
              max_age: float | None = None) -> list[TaskSummary]:  # fmt: skip
        """Claimable tasks in queue order: status inbox/active (or an expired claim), dependencies finished.

        `max_age` lets a hot loop reuse an index that recent; every claim re-checks the task under its lock.
        """
        return list(self._ready_iter(project, ids, max_age))

    def _ready_iter(
        self, project: str | None, ids: Iterable[str] | None, max_age: float | None
    ) -> Iterator[TaskSummary]:
        self.store.refresh(max_age)
        ordered, status_of = self.store.queue_view()
        wanted = set(ids) if ids is not None else None
        with_record = self.claims.names(max_age)
        at = now()
        for summary in ordered:
            task_id = summary["id"]
            if wanted is not None and task_id not in wanted:
                continue
            if project is not None and summary["project"] != project:
                continue
            status = summary["status"]
            if not self._claimable_status(status, task_id in with_record):
                continue
            live = self.claims.lease_state(task_id, status, at) if task_id in with_record else None
            if live is None and not rules.is_status_claimable(status):
                continue  # its claim record vanished meanwhile: an in_progress task nobody holds is left alone
            if live:
                continue
            if rules.blocking_dependencies(summary["depends_on"], status_of):
                continue
            yield summary

    @staticmethod
    def _claimable_status(status: str, has_claim_record: bool) -> bool:
        return rules.is_status_claimable(status) or (status == "in_progress" and has_claim_record)

    # -- claiming -----------------------------------------------------------------------------------------------
    def claim_next(
        self,
        caller: str,
        task_id: str | None = None,
        project: str | None = None,
        ids: Iterable[str] | None = None,
        lease_seconds: float | None = None,
    ) -> dict:
        """Claim `task_id`, or the first ready task (optionally of a project or a batch of ids).

        Returns the task's fields plus `claim_token` and `lease_expires_at`. ClaimRefused if `task_id` cannot be
        claimed; NothingToClaim if no task is ready.
        """
        caller = _check_caller(caller)
        lease = lease_seconds or self.config.lease_seconds
        self.store.ensure_state()
        if task_id is not None:
            summary = self.store.find(task_id)
            outcome = self._try_claim(summary, caller, lease, blocking=True)
            if isinstance(outcome, str):
                raise ClaimRefused(outcome)
            return outcome
        # A recent index is good enough to pick candidates (each is re-checked under its lock), but
        # "nothing to claim" is only said after a full, fresh look.
        for max_age in (INDEX_MAX_AGE, None):
            contended = []
            for summary in self._ready_iter(project, ids, max_age):
                outcome = self._try_claim(summary, caller, lease, blocking=False)
                if outcome is None:
                    contended.append(summary)
                elif isinstance(outcome, dict):
                    return outcome
            for summary in contended:
                outcome = self._try_claim(summary, caller, lease, blocking=True)
                if isinstance(outcome, dict):
                    return outcome
        scope = f" in project {project}" if project else (" in this batch" if ids is not None else "")
        raise NothingToClaim(f"nothing to claim{scope}: no task is ready (see `hypervisor preflight`)")

    def _try_claim(self, known: TaskSummary, caller: str, lease: float, blocking: bool) -> dict | str | None:
        """A claim dict on success, a refusal text, or None if non-blocking and another process holds the lock."""
        task_id = known["id"]
        with fsutil.locked(self.store.lock_path(task_id), blocking=blocking) as got:
            if not got:
                return None
            # The record (and its fence) is read before the task file: a claimer on another host that wins after
            # this read moves the fence, so a file read older than its change can never win the acquire below.
            claim, fence = self.claims.read_fenced(task_id)
            try:
                summary, doc = self.store.read(known)
            except TaskNotFound as error:
                return str(error)
            at = now()
            if claim is not None and not claim.expired(at):
                return (
                    f"task {task_id} is already claimed by {claim.caller} until {iso(claim.lease_expires_at)} "
                    f"({humanize(claim.lease_expires_at - at)} left); claim another task"
                )
            status = summary["status"]
            if not self._claimable_status(status, claim is not None):
                return f"task {task_id} is {status}; only inbox or active tasks can be claimed"
            waiting = rules.blocking_dependencies(summary["depends_on"], self.store.queue_view()[1])
            if waiting:
                return f"task {task_id} waits on unfinished dependencies: {', '.join(waiting)}"
            attempts = max(summary["attempts"], claim.attempts if claim else 0) + 1
            previous = None
            if claim is not None:
                previous = {"caller": claim.caller, "token": claim.token, "lease_expires_at": claim.lease_expires_at}
            new = Claim(
                task_id=task_id,
                token=secrets.token_hex(16),
                caller=caller,
                claimed_at=at,
                lease_seconds=lease,
                lease_expires_at=at + lease,
                attempts=attempts,
                path=summary["path"],
                status_before=claim.status_before if claim else status,
                assignee_before=claim.assignee_before if claim else summary["assignee"],
                previous=previous,
                scope=summary["scope"],
            )
            winner = self.claims.acquire(new, fence)
            if winner is not None:
                return f"task {task_id} was claimed meanwhile by {winner.caller}; claim another task"
            if attempts > self.config.max_attempts:
                self._dead_letter(task_id, doc, claim, new.token, attempts - 1)
                return (
                    f"task {task_id} failed {attempts - 1} attempts (max_attempts {self.config.max_attempts}) "
                    "and was moved to blocked"
                )
            if claim is not None:
                workers.drop_journal(self.store.state, task_id, claim.token)
            fsutil.fault_point("claim-recorded")
            doc.set("status", "in_progress")
            doc.set("assignee", caller)
            doc.set("attempts", attempts)
            doc.set("modified", iso(at))
            self.store.write(doc)
            self.event(
                "taken_over" if claim is not None else "claimed",
                task_id,
                caller=caller,
                attempts=attempts,
                lease_expires_at=iso(new.lease_expires_at),
                host=self.host,
                pid=os.getpid(),
                **({"previous_caller": claim.caller} if claim else {}),
            )
            result = dict(summary)
            result.update(
                status="in_progress",
                assignee=caller,
                attempts=attempts,
                claim_token=new.token,
                lease_expires_at=iso(new.lease_expires_at),
            )
            if claim is not None:
                result["reclaimed_from"] = claim.caller
            return result

    def handed_over(self, task_id: str, token: str) -> dict:
        """The claim a supervisor took for its worker, in the shape `claim_next` returns, if `token` still holds it.

        A worker the supervisor started calls claim_next_task as usual; instead of a refusal ("already claimed")
        it gets the claim made for it."""
        known = self.store.find(task_id)
        summary, _ = self.store.read(known)
        claim = self.read_claim(task_id)
        if claim is None:
            raise ClaimRefused(f"claim lost: task {task_id} has no live claim (it is {summary['status']}); stop")
        problem = claims.token_problem(claim, token, now())
        if problem:
            raise ClaimRefused(problem)
        result = dict(summary)
        result.update(claim_token=claim.token, lease_expires_at=iso(claim.lease_expires_at), attempts=claim.attempts)
        return result

    def _dead_letter(self, task_id: str, doc: TaskDoc, claim: Claim | None, token: str, attempts: int) -> None:
        """Block a task found over max_attempts at claim time, under the claim `token` just taken for it."""
        doc.set("status", "blocked")
        doc.set("blocked_reason", rules.DEAD_LETTER_REASON)
        doc.set("attempts", attempts)
        doc.set("modified", iso(now()))
        self.drop_claim(task_id, token)
        self.store.write(doc)
        self.event("dead_letter", task_id, attempts=attempts, reason=rules.DEAD_LETTER_REASON,
                   last_caller=claim.caller if claim else None)  # fmt: skip

    # -- holder operations --------------------------------------------------------------------------------------
    def _authorise(self, task_id: str, status: str, token: str | None, caller: str | None) -> Claim:
        """The live claim if `token` (or `caller`) holds it; ClaimRefused with what to do next otherwise."""
        if not token and not caller:
            raise UsageError(f"task {task_id}: give the claim token (or the caller that holds the claim)")
        claim = self.read_claim(task_id)
        at = now()
        if claim is None:
            raise ClaimRefused(
                f"claim lost: task {task_id} has no live claim (it is {status}); "
                "claim it again before changing it, or pick another task"
            )
        if token:
            problem = claims.token_problem(claim, token, at)
            if problem:
                raise ClaimRefused(problem)
            return claim
        if caller == claim.caller:
            return claim
        raise ClaimRefused(f"task {task_id} is claimed by {claim.caller}, not by {caller}")

    def _holder_update(self, task_id: str, token: str | None, caller: str | None, apply) -> dict:
        def change(summary: TaskSummary, doc: TaskDoc) -> dict:
            return apply(summary, doc, self._authorise(task_id, summary["status"], token, caller))

        return self.store.rewrite(self.store.find(task_id), change)

    def renew(self, task_id: str, token: str | None = None, caller: str | None = None,
              lease_seconds: float | None = None) -> dict:  # fmt: skip
        """Extend the lease of a live claim from now; returns `task_id` and the new `lease_expires_at`."""

        def apply(summary: dict, doc: TaskDoc, claim: Claim) -> dict:
            renewed = self.claims.renew(task_id, claim.token, lease_seconds)
            if renewed is None:
                raise ClaimRefused(f"claim lost: task {task_id} was taken over meanwhile; stop work on it")
            claim = renewed
            self.event("renewed", task_id, caller=claim.caller, lease_expires_at=iso(claim.lease_expires_at))
            return {"id": task_id, "lease_expires_at": iso(claim.lease_expires_at), "caller": claim.caller}

        return self._holder_update(task_id, token, caller, apply)

    def edit(self, task_id: str, change, token: str | None = None, caller: str | None = None) -> object:
        """Apply `change(summary, doc, claim)` to a claimed task's document under its lock (holder only)."""
        return self._holder_update(task_id, token, caller, change)

    def release(self, task_id: str, token: str | None = None, caller: str | None = None,
                reason: str | None = None, status: str | None = None, assignee: str | None = None,
                count_attempt: bool = True) -> dict:  # fmt: skip
        """Give a claimed task back to the queue, in `status` (default: its status before the claim).

        The assignee goes back to what it was unless `assignee` is given. The attempt stays counted unless
        `count_attempt` is False (triage's claims are bookkeeping, not tries at the work).
        """
        if status is not None and not rules.is_status_claimable(status):
            raise UsageError(f"a released task goes back to inbox or active, not {status!r}")

        def apply(summary: dict, doc: TaskDoc, claim: Claim) -> dict:
            if summary["status"] == "in_progress":
                doc.set("status", status or claim.status_before)
                restored = assignee or claim.assignee_before
                if restored is None:
                    doc.remove("assignee")
                else:
                    doc.set("assignee", restored)
                if not count_attempt:
                    doc.set("attempts", claim.attempts - 1)
                doc.set("modified", iso(now()))
            self.drop_claim(task_id, claim.token)
            workers.drop_journal(self.store.state, task_id, claim.token)
            attempts = claim.attempts if count_attempt else claim.attempts - 1
            self.event("released", task_id, caller=claim.caller, attempts=attempts, reason=reason)
            return {"id": task_id, "status": doc.data.get("status"), "attempts": attempts}

        return self._holder_update(task_id, token, caller, apply)

    def complete(self, task_id: str, token: str | None = None, caller: str | None = None, summary: str = "",
                 commit: str | None = None, **log: object) -> dict:  # fmt: skip
        """Mark a claimed task done, append its worker-log entry, end the claim."""
        if not summary.strip():
            raise UsageError(f"task {task_id}: a completion needs a summary of what was done")
        return self._finish(task_id, token, caller, "done", summary, commit=commit, **log)

    def block(self, task_id: str, token: str | None = None, caller: str | None = None, reason: str = "",
              **log: object) -> dict:  # fmt: skip
        """Mark a claimed task blocked with a reason, append its worker-log entry, end the claim."""
        if not reason.strip():
            raise UsageError(f"task {task_id}: blocking needs a reason a person can act on")
        return self._finish(task_id, token, caller, "blocked", reason, **log)

    def dead_letter(self, task_id: str, token: str, detail: str, **log: object) -> dict:
        """Block a claimed task with reason `max_attempts` (the dead letter); `detail` says what the last try did."""
        return self._finish(task_id, token, None, "blocked", f"{rules.DEAD_LETTER_REASON}: {detail}",
                            blocked_reason=rules.DEAD_LETTER_REASON, event="dead_letter", **log)  # fmt: skip

    def _finish(self, task_id: str, token: str | None, caller: str | None, outcome: str, text: str,
                commit: str | None = None, blocked_reason: str | None = None, event: str | None = None,
                **log: object) -> dict:  # fmt: skip
        def apply(summary: dict, doc: TaskDoc, claim: Claim) -> dict:
            rules.check_transition(task_id, summary["status"], outcome)
            at = now()
            doc.set("status", outcome)
            if outcome == "done":
                doc.set("completed", iso(at))
                if commit:
                    doc.set("commit", commit)
                doc.remove("blocked_reason")
            else:
                doc.set("blocked_reason", blocked_reason or " ".join(text.split()))
            doc.set("modified", iso(at))
            files, calls = workers.journal_summary(self.store.state, task_id, claim.token)
            log.setdefault("files", files)
            if calls:
                log.setdefault("tool_calls", calls + 1)  # the hooks journal each call after it ran: add this one
            entry = worklog.format_entry(
                at, claim.holder(), outcome, text, commit=commit,
                duration_s=log.pop("duration_s", at - claim.claimed_at), **log,  # type: ignore[arg-type]
            )  # fmt: skip
            doc.append_to_section(worklog.HEADING, entry)
            self.drop_claim(task_id, claim.token)
            workers.drop_journal(self.store.state, task_id, claim.token)
            self.event(event or ("completed" if outcome == "done" else "blocked"), task_id, caller=claim.caller,
                       attempts=claim.attempts, commit=commit, text=text)  # fmt: skip
            return {"id": task_id, "status": outcome, "attempts": claim.attempts, "commit": commit}

        return self._holder_update(task_id, token, caller, apply)


def _check_caller(caller: object) -> str:
    if not isinstance(caller, str) or not caller.strip() or len(caller) > 200 or "\n" in caller:
        raise UsageError(f"caller {caller!r} is not allowed: name the worker in one line of at most 200 characters")
    return caller.strip()
