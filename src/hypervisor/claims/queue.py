"""The shared queue: leased, token-fenced claims on store tasks, their transitions, and the event log."""

from __future__ import annotations

import os

from ..core import fsutil, limits, rules
from ..core.config import Config
from ..core.errors import ClaimRefused, HypervisorError, NothingToClaim, TaskNotFound, UsageError, storage_error
from ..core.timeutil import iso, now
from ..tasks import creation, worklog
from ..tasks.store import FRESH_FOR, TaskStore
from ..tasks.task import TaskSummary
from ..tasks.taskfile import TaskDoc
from . import advice, recovery, workers
from . import attempts as attempts_rule
from . import records as claims
from .backend import FileClaims, open_claims, resolve_backend
from .holding import HolderOperations, warn
from .records import Claim

TYPE_CHECKING = False  # collections.abc costs every claim 4 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator


class TaskQueue(HolderOperations):
    """Claim, renew, release, complete and block tasks of one store; every transition goes to the event log.

    What a claim's holder does with it (renew, edit, release, complete, block) is in holding.HolderOperations."""

    def __init__(self, store: TaskStore, config: Config | None = None, claims: FileClaims | None = None) -> None:
        self.store = store
        self.config = config or Config()
        self.host = os.uname().nodename  # socket.gethostname() (both read uname(2)) without socket's import
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
            raise ClaimRefused(advice.taken_over_meanwhile(task_id, current.caller if current else None))

    def event(self, kind: str, task_id: str, **fields: object) -> None:
        """Record one transition in the event log (events.jsonl, or the Redis stream).

        The log is written last, after the change it records: a log that cannot be written (a full disk) costs
        the log line, said on stderr, never the change itself."""
        try:
            self.claims.event({"ts": iso(now()), "event": kind, "task": task_id, **fields})
        except OSError as error:
            warn(f"the {kind} event of task {task_id} was not logged: {storage_error(error)}")

    def events(self, since: object = None) -> list[dict]:
        """The transitions recorded after the cursor `since` (from `events_cursor`), or all of them."""
        return self.claims.events(since)

    def events_cursor(self) -> object:
        return self.claims.events_cursor()

    # -- the ready queue ----------------------------------------------------------------------------------------
    def ready(self, project: str | None = None, ids: Iterable[str] | None = None,
              max_age: float | None = None) -> list[TaskSummary]:  # fmt: skip
        """Claimable tasks in queue order: status inbox/active (or an expired claim), dependencies finished.

        `max_age` lets a caller use an index walked that recently; every claim re-checks the task under its lock.
        """
        return list(self._ready_iter(project, ids, max_age))

    def _ready_iter(
        self, project: str | None, ids: Iterable[str] | None, max_age: float | None, hinted: bool = False
    ) -> Iterator[TaskSummary]:
        """`ready`, lazily; `hinted` (a claim's first look) skips the tasks the index notes as held by a live claim
        (TaskIndex.note_lease) and notes the ones it finds held."""
        self.store.refresh(max_age)
        wanted = set(ids) if ids is not None else None
        with_record = self.claims.look(max_age)
        at = now()
        for summary in self.store.in_queue_order(at if hinted else None):
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
                if recovery.stranded_wait(self.store, summary, self.config.lease_seconds, at) > 0:
                    continue  # in_progress with no claim: claimable once it has been left alone a whole lease
            elif live:
                # In progress and live past its hint (renewed since): looked at again FRESH_FOR from now. A row
                # that says active was claimed since it was read: its claimer notes it.
                if hinted and status == "in_progress":
                    self.store.note_lease(summary, at + FRESH_FOR)
                continue
            depends_on = summary["depends_on"]
            if depends_on and rules.blocking_dependencies(depends_on, self.store.indexed_statuses(depends_on)):
                continue
            yield summary

    @staticmethod
    def _claimable_status(status: str, has_claim_record: bool) -> bool:
        return rules.is_status_claimable(status) or status == "in_progress"

    # -- claiming -----------------------------------------------------------------------------------------------
    def claim_next(
        self,
        caller: str,
        task_id: str | None = None,
        project: str | None = None,
        ids: Iterable[str] | None = None,
        lease_seconds: float | None = None,
        lands: str | None = None,
    ) -> dict:
        """Claim `task_id`, or the first ready task (optionally of a project or a batch of ids).

        `lands`: the branch the work must land on (`hypervisor run --land`): the holder's completion then leaves
        the task in `review` until the landing marks it done (claims.landing). Returns the task's fields plus `claim_token` and `lease_expires_at`. ClaimRefused if `task_id` cannot be
        claimed; NothingToClaim if no task is ready.
        """
        caller = _check_caller(caller)
        lease = lease_seconds or self.config.lease_seconds
        self.store.ensure_state()
        if task_id is not None:
            summary = self.store.find(task_id)
            outcome = self._try_claim(summary, caller, lease, blocking=True, lands=lands)
            if isinstance(outcome, str):
                raise ClaimRefused(outcome)
            return outcome
        # An index walked within FRESH_FOR is good enough to pick candidates (each is re-read under its lock, its
        # dependencies checked against their files), and its lease hints to skip the tasks in flight; but "nothing
        # to claim" is only said after a fresh walk, with every row looked at.
        for max_age in (FRESH_FOR, None):
            contended = []
            for summary in self._ready_iter(project, ids, max_age, hinted=max_age is not None):
                outcome = self._try_claim(summary, caller, lease, blocking=False, lands=lands)
                if outcome is None:
                    contended.append(summary)
                elif isinstance(outcome, dict):
                    return outcome
            for summary in contended:
                outcome = self._try_claim(summary, caller, lease, blocking=True, lands=lands)
                if isinstance(outcome, dict):
                    return outcome
        scope = f" in project {project}" if project else (" in this batch" if ids is not None else "")
        raise NothingToClaim(advice.nothing_to_claim(scope))

    def _take_back(self, known: TaskSummary, new: Claim) -> None:
        """Undo a claim that failed before its token was handed out: nobody may hold the task by that token, so its
        record goes (if it was written) and so does its lease hint. A record that cannot go is left to its lease."""
        try:
            self.claims.drop(new.task_id, new.token)
        except (OSError, HypervisorError) as error:  # the first failure is the one raised; this one is said
            cause = storage_error(error) if isinstance(error, OSError) else error
            warn(f"the unfinished claim of task {new.task_id} could not be dropped; its lease frees the task ({cause})")
        self.store.note_lease(known, None)

    def _try_claim(self, known: TaskSummary, caller: str, lease: float, blocking: bool,
                   lands: str | None = None) -> dict | str | None:  # fmt: skip
        """A claim dict on success, a refusal text, or None if non-blocking and another process holds the lock.

        The order is what keeps every failure recoverable: the claim record first (the one winner), then the task
        file; if the file cannot be written the record is dropped again, so no claim outlives a token that was
        never printed. A kill between the two leaves a live claim whose file does not show it: the next touch
        writes it back (recovery.agree), and the lease running out frees it."""
        task_id = known["id"]
        with fsutil.locked(self.store.lock_path(task_id), blocking=blocking) as got:
            if not got:
                return None
            # The record (and its fence) is read before the task file: a claimer on another host that wins after
            # this read moves the fence, so a file read older than its change can never win the acquire below.
            claim, fence = self.claims.read_fenced(task_id)
            try:
                first_read = self.store.read_raw(known)
            except TaskNotFound as error:
                return str(error)
            summary = first_read[0]
            at = now()
            if claim is not None and not claim.expired(at):
                return advice.already_claimed(task_id, claim, at)
            status = summary["status"]
            stranded = status == "in_progress" and claim is None
            if stranded:
                wait = recovery.stranded_wait(self.store, summary, self.config.lease_seconds, at)
                if wait > 0:
                    return advice.stranded(task_id, summary, wait)
            elif not self._claimable_status(status, claim is not None):
                return advice.unclaimable(task_id, summary)
            parent = creation.follow_up_parent(first_read[1].data, caller)
            if parent is not None and self._holds(parent, caller, at):
                return advice.own_follow_up(task_id, parent)
            depends_on = summary["depends_on"]
            waiting = rules.blocking_dependencies(depends_on, self.store.fresh_statuses(depends_on))
            if waiting:
                return advice.waiting(task_id, waiting)
            attempts = max(summary["attempts"], claim.attempts if claim else 0) + 1
            previous = None
            if claim is not None:
                previous = {"caller": claim.caller, "token": claim.token, "lease_expires_at": claim.lease_expires_at}
            before = claim.status_before if claim else ("active" if stranded else status)
            new = Claim(
                task_id=task_id,
                token=os.urandom(16).hex(),  # secrets.token_hex(16), without the imports of secrets (8 ms)
                caller=caller,
                claimed_at=at,
                lease_seconds=lease,
                lease_expires_at=at + lease,
                attempts=attempts,
                path=summary["path"],
                status_before=before,
                assignee_before=claim.assignee_before if claim else (None if stranded else summary["assignee"]),
                previous=previous,
                scope=summary["scope"],
                lands=lands,
            )
            # Noted before the fsyncs of the record and the file, so other claimers' first looks pass it by now
            # rather than each find it taken; a failure below takes the note back.
            self.store.note_lease(known, new.lease_expires_at)
            try:
                winner = self.claims.acquire(new, fence)
            except BaseException:
                # The record may be in place even so (its folder's fsync failed after the rename, on a full disk)
                self._take_back(known, new)
                raise
            if winner is not None:
                return advice.claimed_meanwhile(task_id, winner.caller)
            if attempts > self.config.max_attempts:
                self._dead_letter(known, claim, new, attempts - 1, first_read)
                return advice.dead_lettered(task_id, attempts - 1, self.config.max_attempts)
            fsutil.fault_point("claim-recorded")
            note = recovery.stranded_note(summary, caller, at) if stranded else None

            def take(_: TaskSummary, doc: TaskDoc) -> None:
                doc.set("status", "in_progress")
                doc.set("assignee", caller)
                doc.set("attempts", attempts)
                doc.set("modified", iso(at))
                if note:
                    doc.append_to_section(worklog.HEADING, note)

            try:
                # The claim record is durable (fsync'd, and its folder) before this write starts, and the file is
                # made to agree with it (recovery.agree) on the next touch: a power cut that undoes this replace
                # loses nothing, so the folder's fsync is left out (one of three a claim would wait for).
                self.store.rewrite_locked(known, take, first_read, lease_until=new.lease_expires_at,
                                          sync_folder=False)  # fmt: skip
            except BaseException:
                self._take_back(known, new)
                raise
            if claim is not None:
                workers.drop_journal(self.store.state, task_id, claim.token)
            self.event(
                "taken_over" if claim is not None or stranded else "claimed",
                task_id,
                caller=caller,
                attempts=attempts,
                lease_expires_at=iso(new.lease_expires_at),
                host=self.host,
                pid=os.getpid(),
                **({"previous_caller": claim.caller} if claim else {}),
                **({"previous_caller": summary["assignee"], "reason": "stranded"} if stranded else {}),
            )
            result = dict(summary)
            result.update(
                status="in_progress",
                assignee=caller,
                attempts=attempts,
                attempts_left=attempts_rule.left(attempts, self.config.max_attempts),
                max_attempts=self.config.max_attempts,
                claim_token=new.token,
                lease_expires_at=iso(new.lease_expires_at),
            )
            if claim is not None:
                result["reclaimed_from"] = claim.caller
                result["reclaimed_lease_expired_at"] = iso(claim.lease_expires_at)
            elif stranded:
                result["reclaimed_from"] = summary["assignee"] or "nobody (stranded)"
            return result

    def _holds(self, task_id: str, caller: str, at: float) -> bool:
        """Whether `caller` holds a live claim on `task_id`."""
        claim = self.claims.read(task_id)
        return claim is not None and claim.caller == caller and not claim.expired(at)

    # -- landing (a task completed under `lands` waits in review) -------------------------------------------------
    def landed(self, task_id: str, branch: str, commit: str, who: str) -> dict:
        """Its work is on `branch` at `commit`: the task in review is done (claims.landing.landed)."""
        from . import landing

        return landing.landed(self, task_id, branch, commit, who)

    def turn_back(self, task_id: str, what: str, detail: str, who: str) -> dict:
        """Its work did not land: the task in review goes back to active, or to the dead letter at max_attempts."""
        from . import landing

        return landing.turn_back(self, task_id, what, detail, who)

    def handed_over(self, task_id: str, token: str) -> dict:
        """The claim a supervisor took for its worker, in the shape `claim_next` returns, if `token` still holds it.

        A worker the supervisor started calls claim_next_task as usual; instead of a refusal ("already claimed")
        it gets the claim made for it."""
        known = self.store.find(task_id)
        summary, _ = self.store.read(known)
        claim = self.read_claim(task_id)
        if claim is None:
            raise ClaimRefused(advice.supervised_lost(task_id, summary["status"]))
        problem = claims.token_problem(claim, token, now())
        if problem:
            raise ClaimRefused(problem)
        result = dict(summary)
        limit = self.config.max_attempts
        result.update(claim_token=claim.token, lease_expires_at=iso(claim.lease_expires_at), attempts=claim.attempts,
                      attempts_left=attempts_rule.left(claim.attempts, limit), max_attempts=limit)  # fmt: skip
        return result

    def _dead_letter(self, known: TaskSummary, claim: Claim | None, new: Claim, attempts: int,
                     first_read: tuple) -> None:  # fmt: skip
        """Block a task found over max_attempts at claim time, under the claim `new` just taken for it: the file
        first, then the claim ends (a failed write drops the claim too, leaving the task as it was).

        Its worker log lists each attempt and how it ended; the assignee goes back to what it was before the
        claims (the log names who held it last), so that a blocked task does not show a worker still on it."""
        task_id = known["id"]
        last_holder = claim.caller if claim else first_read[0]["assignee"]
        tried = attempts_rule.history(self.events(), task_id)

        def block(_: TaskSummary, doc: TaskDoc) -> None:
            at = now()
            doc.set("status", "blocked")
            doc.set("blocked_reason", rules.DEAD_LETTER_REASON)
            doc.set("attempts", attempts)
            if new.assignee_before is None:
                doc.remove("assignee")
            else:
                doc.set("assignee", new.assignee_before)
            doc.set("modified", iso(at))
            ended = "its lease ran out" if claim else "left in_progress with no live claim"
            entry = attempts_rule.dead_letter_entry(
                at, task_id, attempts, self.config.max_attempts, tried, ended, last_holder
            )
            doc.append_to_section(worklog.HEADING, entry)

        try:
            self.store.rewrite_locked(known, block, first_read)
        finally:
            self.claims.drop(task_id, new.token)
        self.event("dead_letter", task_id, attempts=attempts, reason=rules.DEAD_LETTER_REASON,
                   last_caller=claim.caller if claim else None)  # fmt: skip


def _check_caller(caller: object) -> str:
    limits.check_text("caller", caller, limits.NAME_MAX, one_line=True)
    if not caller.strip():  # type: ignore[union-attr]
        raise UsageError("caller is empty: name the worker, e.g. --caller worker-1")
    return caller.strip()  # type: ignore[union-attr]
