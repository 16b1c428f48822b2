"""What the supervisor does when a worker ends: read its outcome from the store (never from the agent's word),
then settle it: done or blocked as the store says, or released for a retry, dead-lettered, or (where even that
cannot be written) the claim abandoned so that rule 2 frees the task."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

from ..core import rules
from ..core.errors import HypervisorError, TaskNotFound, disk_failed
from .outcome import decide
from .processes import Attempt, describe_exit, kill_leftovers, send_signal

if TYPE_CHECKING:
    from .runs import TaskEntry


class Settling:
    """The outcome side of Supervisor (a mixin: it uses the supervisor's queue, entries, progress, worktrees and
    run flags)."""

    # -- outcomes -----------------------------------------------------------------------------------------------
    def _finished(self, attempt: Attempt, code: int | None) -> None:
        self.running.pop(attempt.slot, None)
        if attempt.pgid is not None:  # whatever the agent left running in its group goes with it
            send_signal(attempt, signal.SIGKILL)
        if attempt.phase == "verify":  # the task's verify in its worktree (--land) ended
            self._verified(attempt, code)
            self._state_changed = True
            return
        kill_leftovers(attempt.token)
        entry = self.entries[attempt.task_id]
        entry.exit_codes.append(code)
        entry.duration_s += time.monotonic() - attempt.started
        entry.tokens += self.agent.tokens(attempt.log)
        landing = self.land_branch is not None
        self._close_worktree(attempt, entry, keep=landing)
        status, text, commit = self._outcome(attempt)
        if commit and not entry.commit:
            entry.commit = commit
        if landing and status == "review" and not self.aborting:  # completed: done once verified and landed
            self._agent_passed(attempt, entry, text)
            self._state_changed = True
            return
        if landing:
            self._remove_worktree(attempt)
            if status == "review":  # interrupted: it stays in review, and the next run with --land lands it
                status, text = "interrupted", f"{text}; completed but not landed (run interrupted)"
            else:
                self.journal.remove(attempt.task_id)
        retry = False
        if status == "unfinished":
            why = attempt.kill_reason or describe_exit(code)
            status, text, retry = self._after_failure(attempt, entry, why)
        self._settle(entry, status, text, final=not retry)
        self.progress.finished(attempt, entry, retry)
        self._state_changed = True

    def _after_failure(self, attempt: Attempt, entry: TaskEntry, why: str) -> tuple[str, str, bool]:
        """The worker ended without an outcome: give the task back, retry it, or dead-letter it."""
        if self.aborting:
            self._give_back(attempt, count_attempt=False, reason=f"interrupted: {why}")
            return "interrupted", f"run interrupted; the task was released ({why})", False
        claim = self.queue.read_claim(attempt.task_id)
        attempts = claim.attempts if claim else entry.attempts
        if attempts >= self.max_attempts:
            detail = f"{attempts} attempts, the last {why}"
            try:
                self.queue.dead_letter(attempt.task_id, attempt.token, detail, duration_s=entry.duration_s)
            except HypervisorError as error:
                return "lost", f"{why}; the dead letter failed: {error}", False
            except OSError as error:
                failed = self._abandon(attempt, error, detail, "dead-lettering it")
                return "lost", f"{why}; the dead letter failed: {failed}", False
            return "dead_letter", f"{rules.DEAD_LETTER_REASON}: {detail}", False
        failed = self._give_back(attempt, count_attempt=True, reason=why)
        if failed:
            return "lost", f"{why}; the release failed: {failed}", False
        if self.draining:
            return "released", f"{why}; released, not retried because the run was drained", False
        return "released", f"{why}; released for another attempt", True

    def _give_back(self, attempt: Attempt, count_attempt: bool, reason: str) -> str | None:
        """Release the attempt's claim; None, or why the release could not be written (the claim is abandoned)."""
        try:
            released = self.queue.release(attempt.task_id, token=attempt.token, reason=reason,
                                          count_attempt=count_attempt)  # fmt: skip
            self.entries[attempt.task_id].attempts = released["attempts"]
        except HypervisorError as error:
            self.progress.note(f"{attempt.task_id}: could not release the claim: {error}")
        except OSError as error:
            return self._abandon(attempt, error, reason, "releasing it")
        return None

    def _abandon(self, attempt: Attempt, error: OSError, reason: str, doing: str) -> str:
        """The outcome or release of an attempt could not be written: give its claim up (queue.abandon) so rule 2
        frees the task, instead of leaving a live claim nobody holds; what happened, in one line."""
        message = self._storage_failed(error, f"{attempt.task_id}: {doing}", stop=disk_failed(error))
        try:
            abandoned = self.queue.abandon(attempt.task_id, attempt.token, reason)
        except (HypervisorError, OSError):
            abandoned = False
        if abandoned:
            return (f"{message}; the claim was given up: the task can be claimed again a lease after its file last "
                    f"changed, or at once after `hypervisor reopen {attempt.task_id}`")  # fmt: skip
        return f"{message}; the claim's lease frees the task"

    def _outcome(self, attempt: Attempt) -> tuple[str, str, str | None]:
        """(status, outcome or reason, commit) of an attempt, read from the store, never from the agent's word."""
        store = self.queue.store
        try:
            try:  # the one file, read fresh; a rescan of the whole root only if it moved
                summary, doc = store.read(store.find(attempt.task_id, refresh=False))
            except TaskNotFound:
                summary, doc = store.read(store.find(attempt.task_id))
        except HypervisorError as error:
            return "lost", f"the task cannot be read any more: {error}", None
        self.entries[attempt.task_id].attempts = summary["attempts"]  # the file's count is the one shown
        claim = self.queue.read_claim(attempt.task_id)
        return decide(summary["status"], doc.data, claim, attempt.token, lambda: self._events_since(attempt))

    def _settle(self, entry: TaskEntry, status: str, text: str, final: bool = True) -> None:
        entry.status, entry.text = status, text
        if final:
            self.finished.add(entry.task_id)

    def _close_worktree(self, attempt: Attempt, entry: TaskEntry, keep: bool = False) -> None:
        """Commit what the worker left; remove the worktree unless `keep` (verify runs in it first)."""
        if self.worktrees is None:
            return
        try:
            if keep:
                head = self.worktrees.commit_leftovers(attempt.task_id, attempt.worker)
                branch = self.worktrees.branch(attempt.task_id) if head else None
            else:
                branch, head = self.worktrees.close(attempt.task_id, attempt.worker)
        except HypervisorError as error:
            self.progress.note(f"{attempt.task_id}: worktree: {error}")
            return
        if branch:
            entry.branch, entry.commit = branch, head

    def _events_since(self, attempt: Attempt) -> list[dict]:
        try:
            events = self.queue.events(attempt.events_offset)
        except HypervisorError:
            return []
        return [event for event in events if event.get("task") == attempt.task_id]
