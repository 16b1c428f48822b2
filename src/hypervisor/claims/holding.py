"""What the holder of a claim does with it: renew, edit, release, complete, block, dead-letter, abandon.

The order of every change is what keeps a failure recoverable: the task file is written first (re-applied over a
person's save, see TaskStore.rewrite_locked), then the claim ends, then the event is logged. A failure before the
file is written changes nothing; a kill after it leaves an outcome whose claim rule 2 ends (recovery.reconcile).
"""

from __future__ import annotations

from ..core import fsutil, rules
from ..core.errors import ClaimRefused, UsageError
from ..core.timeutil import iso, now
from ..tasks import worklog
from . import advice, recovery, workers
from . import attempts as attempts_rule
from . import records as claims

TYPE_CHECKING = False  # typing costs every CLI call 2 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from ..core.config import Config
    from ..tasks.store import TaskStore
    from ..tasks.task import TaskSummary
    from ..tasks.taskfile import TaskDoc
    from .backend import FileClaims
    from .records import Claim


def warn(text: str) -> None:
    """A line on stderr about something that went wrong beside the change that was made."""
    import sys

    print(f"hypervisor: warning: {text}", file=sys.stderr)


class HolderOperations:
    """The holder's side of TaskQueue (a mixin: it uses the queue's store, claims, config, read_claim and event)."""

    store: TaskStore
    claims: FileClaims
    config: Config

    # -- holder operations --------------------------------------------------------------------------------------
    def _authorise(self, task_id: str, summary: TaskSummary, token: str | None, caller: str | None) -> Claim:
        """The live claim if `token` (or `caller`) holds it; ClaimRefused with what to do next otherwise."""
        if not token and not caller:
            raise UsageError(advice.no_token(task_id))
        claim = self.read_claim(task_id)
        at = now()
        if claim is None:
            raise ClaimRefused(advice.no_claim(task_id, summary, self._stranded_wait(summary, at)))
        if token:
            problem = claims.token_problem(claim, token, at)
            if problem:
                raise ClaimRefused(problem)
            return claim
        if caller == claim.caller:
            return claim
        raise ClaimRefused(advice.held_by_other(task_id, claim, caller or ""))

    def _stranded_wait(self, summary: TaskSummary, at: float) -> float:
        return recovery.stranded_wait(self.store, summary, self.config.lease_seconds, at)

    def _holder_update(self, task_id: str, token: str | None, caller: str | None, patch, settle=None) -> dict:
        """Under the task's lock: `patch(summary, doc, claim)` the file of a task `token`/`caller` holds (re-applied if
        a person saves it meanwhile), then `settle(result, claim)` once the file is written."""
        known = self.store.find(task_id)
        with self.store.task_lock(task_id):
            held: list[Claim] = []

            def change(summary: TaskSummary, doc: TaskDoc) -> dict:
                held[:] = [self._authorise(task_id, summary, token, caller)]
                return patch(summary, doc, held[0])

            result = self.store.rewrite_locked(known, change)
            return settle(result, held[0]) if settle is not None else result

    def renew(self, task_id: str, token: str | None = None, caller: str | None = None,
              lease_seconds: float | None = None) -> dict:  # fmt: skip
        """Extend the lease of a live claim from now; returns `task_id` and the new `lease_expires_at`.

        A file that no longer shows the claim (an editor saved an old buffer) is written back; a file a person
        marked done, blocked, review or cancelled ends the claim instead, and the renewal is refused."""
        known = self.store.find(task_id)
        with self.store.task_lock(task_id):
            first_read = self.store.read_raw(known)
            summary = first_read[0]
            claim = self._authorise(task_id, summary, token, caller)
            if summary["status"] in recovery.ENDED_BY_FILE:
                recovery.end_claim(self, claim, summary["status"])
                raise ClaimRefused(advice.ended_by_file(task_id, summary["status"]))
            renewed = self.claims.renew(task_id, claim.token, lease_seconds)
            if renewed is None:
                raise ClaimRefused(advice.taken_over_meanwhile(task_id))
            recovery.write_back(self, known, renewed, first_read)
            self.event("renewed", task_id, caller=renewed.caller, lease_expires_at=iso(renewed.lease_expires_at))
            return {"id": task_id, "lease_expires_at": iso(renewed.lease_expires_at), "caller": renewed.caller}

    def reconcile(self, task_id: str) -> str | None:
        """Rule 2 for one task: make its file agree with its live claim (or end a claim its file says is over);
        what was done (`restored`, `ended`) or None."""
        return recovery.reconcile(self, task_id)

    def reopen(self, task_id: str, reason: str | None = None, reset_attempts: bool = False,
               who: str | None = None) -> dict:  # fmt: skip
        """A blocked, dead-lettered, done, cancelled, review or stranded task back to `active`, logged in its body."""
        return recovery.reopen(self, task_id, reason, reset_attempts, who)

    def edit(self, task_id: str, change, token: str | None = None, caller: str | None = None,
             settle=None) -> object:  # fmt: skip
        """Apply `change(summary, doc, claim)` to a claimed task's document under its lock (holder only); it may
        run more than once (a person's save meanwhile) and must change nothing but `doc`. `settle(result, claim)`
        runs once, after the file is written (claim records and events go there)."""
        return self._holder_update(task_id, token, caller, change, settle)

    def release(self, task_id: str, token: str | None = None, caller: str | None = None,
                reason: str | None = None, status: str | None = None, assignee: str | None = None,
                count_attempt: bool = True) -> dict:  # fmt: skip
        """Give a claimed task back to the queue, in `status` (default: its status before the claim).

        The assignee goes back to what it was unless `assignee` is given. The attempt stays counted unless
        `count_attempt` is False (triage's claims are bookkeeping, not tries at the work); a counted one gets a
        worker-log line with the reason and the attempts left (see attempts.RULE). The file is written first and
        the claim ended after, so a failed write leaves the claim as it was. Returns `id`, `status`, `attempts`,
        `attempts_left` and `max_attempts`.
        """
        if status is not None and not rules.is_status_claimable(status):
            raise UsageError(f"a released task goes back to inbox or active, not {status!r}")

        def patch(summary: dict, doc: TaskDoc, claim: Claim) -> dict:
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
            attempts = claim.attempts if count_attempt else claim.attempts - 1
            limit = self.config.max_attempts
            if count_attempt:
                entry = attempts_rule.release_entry(now(), claim.holder(), attempts, limit, reason)
                doc.append_to_section(worklog.HEADING, entry)
            return {"id": task_id, "status": doc.data.get("status"), "attempts": attempts,
                    "attempts_left": attempts_rule.left(attempts, limit), "max_attempts": limit}  # fmt: skip

        def settle(result: dict, claim: Claim) -> dict:
            self.end(claim)
            self.event("released", task_id, caller=claim.caller, attempts=result["attempts"], reason=reason)
            return result

        return self._holder_update(task_id, token, caller, patch, settle)

    def abandon(self, task_id: str, token: str, why: str) -> bool:
        """Give up a claim whose release could not be written (a full or failing disk), so that no live claim is
        left that nobody holds. If the file shows the claim (in_progress, an attempt counted) the record goes and
        the task is stranded, which rule 2 repairs: claimable a lease after its file last changed, and `reopen`
        frees it at once. Otherwise the record stays and its lease frees the task. Whether the record went."""
        with self.store.task_lock(task_id):
            summary, _ = self.store.read(self.store.find(task_id, refresh=False))
            if summary["status"] != "in_progress" or summary["attempts"] < 1 or not self.claims.drop(task_id, token):
                return False
        workers.drop_journal(self.store.state, task_id, token)
        self.event("abandoned", task_id, reason=why)
        return True

    def end(self, claim: Claim) -> None:
        """End a claim whose outcome is already in the task file (its record, then its journal)."""
        if not self.claims.drop(claim.task_id, claim.token):
            warn(f"task {claim.task_id} was taken over while it was being finished; its file holds the outcome")
        workers.drop_journal(self.store.state, claim.task_id, claim.token)

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
        """Block a claimed task with reason `max_attempts` (the dead letter); `detail` says what the last try did.

        Its worker-log entry lists each attempt and how it ended (from the event log); the assignee goes back to
        what it was before the claims, and the entry names who held it last."""
        tried = attempts_rule.history(self.events(), task_id)  # type: ignore[attr-defined]
        limit = self.config.max_attempts
        log.setdefault("details", attempts_rule.attempt_lines(task_id, tried, limit, detail))
        return self._finish(task_id, token, None, "blocked", f"{rules.DEAD_LETTER_REASON}: {detail}",
                            blocked_reason=rules.DEAD_LETTER_REASON, event="dead_letter", restore_assignee=True,
                            **log)  # fmt: skip

    def _finish(self, task_id: str, token: str | None, caller: str | None, outcome: str, text: str,
                commit: str | None = None, blocked_reason: str | None = None, event: str | None = None,
                restore_assignee: bool = False, **log: object) -> dict:  # fmt: skip
        """Write the outcome and its worker-log entry into the file, then end the claim, then log the event: a
        failure before the file is written changes nothing; one after it leaves an outcome whose claim the next
        touch ends (recovery.reconcile)."""

        def patch(summary: dict, doc: TaskDoc, claim: Claim) -> dict:
            status = "review" if outcome == "done" and claim.lands else outcome  # done once landed (claims.landing)
            if not rules.may_become(summary["status"], status):  # a person ended it in its file (done, cancelled)
                raise _EndedByFile(summary["status"])
            at = now()
            doc.set("status", status)
            if status == "review":
                doc.remove("blocked_reason")
            elif outcome == "done":
                doc.set("completed", iso(at))
                if commit:
                    doc.set("commit", commit)
                doc.remove("blocked_reason")
            else:
                doc.set("blocked_reason", blocked_reason or " ".join(text.split()))
            if restore_assignee:  # a dead letter: nobody works on it now (its log names who held it last)
                if claim.assignee_before is None:
                    doc.remove("assignee")
                else:
                    doc.set("assignee", claim.assignee_before)
            doc.set("modified", iso(at))
            files, calls = workers.journal_summary(self.store.state, task_id, claim.token)
            extra = dict(log)
            extra.setdefault("files", files)
            if calls:
                extra.setdefault("tool_calls", calls + 1)  # the hooks journal each call after it ran: add this one
            label = f"completed, lands on {claim.lands} once verified" if status == "review" else outcome
            entry = worklog.format_entry(
                at, claim.holder(), label, text, commit=commit,
                duration_s=extra.pop("duration_s", at - claim.claimed_at), **extra,  # type: ignore[arg-type]
            )  # fmt: skip
            doc.append_to_section(worklog.HEADING, entry)
            return {"id": task_id, "status": status, "attempts": claim.attempts, "commit": commit,
                    **({"lands": claim.lands} if status == "review" else {})}  # fmt: skip

        def settle(result: dict, claim: Claim) -> dict:
            fsutil.fault_point("outcome-written")
            self.end(claim)
            self.event(event or ("completed" if outcome == "done" else "blocked"), task_id, caller=claim.caller,
                       attempts=claim.attempts, commit=commit, text=text,
                       **({"lands": result["lands"]} if "lands" in result else {}))  # fmt: skip
            return result

        try:
            return self._holder_update(task_id, token, caller, patch, settle)
        except _EndedByFile as ended:
            self.reconcile(task_id)  # rule 2: the file says the task is over, so its claim ends (claim_ended)
            raise ClaimRefused(advice.ended_by_file(task_id, ended.status)) from None


class _EndedByFile(Exception):
    """An outcome the task file can no longer take: a person marked it done or cancelled under the live claim."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status
