"""The supervisor's side of `--land` (a mixin of Supervisor): verify a completed task in its worktree, hand what
passed to the landing queue (landing.py), and write what landing decided into the tasks (claims.landing): done once
landed, reopened with a `## Landing` entry otherwise. A journal lets the next run finish what a killed one left."""

from __future__ import annotations

import os
import time

from ..claims.landing import output_tail
from ..core.config import check_verify
from ..core.errors import ConfigError, HypervisorError, UsageError, storage_error
from ..core.timeutil import iso, now
from .landing import ENV_LAND_RUN, Journal, Landing, Passed, branch_at_root, clean_dead_runs
from .processes import Attempt, describe_exit, spawn
from .runs import TaskEntry, load_run

LANDER = "hypervisor-land"  # who the worker log names for landing's entries


class Verifying:
    """Uses the supervisor's queue, options, folder, entries, worktrees, progress and loop state."""

    landing: Landing | None = None
    land_branch: str | None = None
    landing_tasks: set[str] = frozenset()  # type: ignore[assignment]  # a set of its own once --land is on

    # -- the start and end of a landing run ---------------------------------------------------------------------
    def _prepare_landing(self) -> None:
        """Resolve BRANCH (before anything is claimed): the branch checked out at the project root by default."""
        branch = self.options.land
        if not branch:
            try:
                branch = branch_at_root(self.options.project_dir)
            except HypervisorError:
                raise UsageError("--land: the project root has no branch checked out (a detached HEAD); name the "
                                 "branch to land on: --land BRANCH") from None  # fmt: skip
        try:
            self.worktrees._git("check-ref-format", "--branch", branch, cwd=self.worktrees.repo)
        except HypervisorError:
            raise UsageError(f"--land {branch!r} is not a branch name git accepts") from None
        self.land_branch = branch
        self.worktrees.upstream = f"refs/heads/{branch}"
        self.journal = Journal(self.queue.store.state)
        self.land_landed: list[str] = []
        self.land_reopened: list[str] = []
        self.land_held: str | None = None
        self.landing_tasks: set[str] = set()
        self.land_from = self.worktrees.base

    def left_to_land(self) -> bool:
        """Whether an earlier run left tasks in review to land on this branch (a run starts for them alone)."""
        return self.land_branch is not None and any(
            record.get("into") == self.land_branch for record in self.journal.records().values()
        )

    def _landing_done(self) -> bool:
        """Whether landing lets the run end: nothing to land, or it holds, or the run is stopping."""
        return self.landing is None or self.aborting or self.landing.idle()

    def _start_landing(self) -> None:
        """With --land: create BRANCH if it does not exist yet (at HEAD), clean up after dead runs, finish what
        their journal holds, and start the landing thread."""
        if self.land_branch is None:
            return
        git, repo = self.worktrees._git, self.worktrees.repo
        try:
            git("rev-parse", "--verify", "--quiet", f"refs/heads/{self.land_branch}", cwd=repo)
        except HypervisorError:
            git("branch", self.land_branch, self.worktrees.base, cwd=repo)
        for path in clean_dead_runs(self.worktrees, self._run_alive):
            self.progress.note(f"landing: removed the scratch worktree {path} of a run that stopped")
        self.landing = Landing(self.worktrees, self.land_branch, self.run_id, os.path.join(self.folder.path, "logs"),
                               self.options.timeout, self.options.kill_grace, self.options.land_batch,
                               self.exits.put, self.queue.config.verify)  # fmt: skip
        self.land_from = self.landing.start_tip
        self.landing.start()
        self._recover_journal()

    def _run_alive(self, run_id: str) -> bool:
        if run_id == self.run_id:
            return True
        try:
            return load_run(self.queue.store.state, run_id).get("status") == "running"
        except HypervisorError:
            return False

    def _recover_journal(self) -> None:
        """Tasks a stopped run left in review for this branch: done if their work is on it already (a kill after
        BRANCH moved), else queued to land again (the merged verify tests them)."""
        store = self.queue.store
        for task_id, record in self.journal.records().items():
            if record.get("into") != self.land_branch or task_id in self.entries:
                continue
            try:
                status = store.read(store.find(task_id))[0]["status"]
            except HypervisorError:
                self.journal.remove(task_id)
                continue
            if status != "review":
                if status != "in_progress":
                    self.journal.remove(task_id)
                continue
            entry = self.entries.setdefault(task_id, TaskEntry(task_id, task_id))
            entry.branch = str(record.get("branch") or self.worktrees.branch(task_id))
            entry.text = "completed in an earlier run; landed by this one"
            self.eligible.add(task_id)
            try:
                entry.commit = self.worktrees._git("rev-parse", "--verify", f"refs/heads/{entry.branch}",
                                                   cwd=self.worktrees.repo)  # fmt: skip
            except HypervisorError:
                self._turn_back(entry, f"its branch {entry.branch} is gone", "  - the branch was deleted", LANDER)
                continue
            self.progress.note(f"{task_id}: left in review by a run that stopped: landing it now")
            self._submit(entry, record.get("verify"))

    def _stop_landing(self) -> None:
        """After the loop: stop the thread, apply what it reported, and say what did not land (still in review,
        in the journal: the next run with --land finishes it)."""
        if self.landing is None:
            return
        self.landing.stop()
        while not self.exits.empty():
            item = self.exits.get_nowait()
            if isinstance(item[0], str):
                self._landing_event(item)
        why = self.land_held or ("the run was interrupted" if self.aborting else "the run ended")
        for task_id in sorted(self.landing_tasks):
            entry = self.entries[task_id]
            entry.landing = "held"
            self._settle(entry, "held", f"not landed on {self.land_branch}: {why}; it stays in review and the next "
                                        "`hypervisor run --isolation worktree --land` lands it")  # fmt: skip

    def land_view(self) -> dict:
        """The summary's `land`: the branch, where it was and is, what landed and what was reopened."""
        tip = self.land_from
        try:
            tip = self.landing.tip() if self.landing else tip
        except HypervisorError:
            pass
        view = {"branch": self.land_branch, "from": self.land_from, "to": tip, "landed": list(self.land_landed),
                "reopened": list(self.land_reopened), "queued": self.landing.waiting() if self.landing else []}  # fmt: skip
        if self.land_held:
            view["held"] = self.land_held
        return view

    # -- a worker's end -----------------------------------------------------------------------------------------
    def _verify_command(self, task_id: str) -> str | None:
        """The task's own `verify:` field, else the project's (`verify:` in .hypervisor.yaml); ConfigError naming
        the file if the task's is not one shell command."""
        store = self.queue.store
        try:
            summary, doc = store.read(store.find(task_id, refresh=False))
        except HypervisorError:
            return self.queue.config.verify
        own = check_verify(doc.data.get("verify"), f"{store.path_of(summary)}: verify:")
        return own or self.queue.config.verify

    def _agent_passed(self, attempt: Attempt, entry: TaskEntry, text: str) -> None:
        """The agent completed its task (now in review): verify it in its worktree, or queue it to land."""
        entry.text = text
        try:
            command = self._verify_command(attempt.task_id)
        except ConfigError as error:
            self._remove_worktree(attempt)
            self._turn_back(entry, "its verify: field cannot be run", f"  - {error}", attempt.worker)
            return
        if command is None:
            self._remove_worktree(attempt)
            self._submit(entry, None)
            return
        attempt.phase, attempt.verify, attempt.claim_gone = "verify", command, True
        attempt.log = self.folder.verify_log_path(attempt.task_id, attempt.number)
        entry.logs.append(attempt.log)
        entry.landing = "verifying"
        env = dict(os.environ, HYPERVISOR_VERIFY="task", HYPERVISOR_TASK_ID=attempt.task_id,
                   HYPERVISOR_RUN_ID=self.run_id, **{ENV_LAND_RUN: self.run_id})  # fmt: skip
        header = f"# verify of {attempt.task_id} (attempt {attempt.number}) in {attempt.workdir}: {command}\n"
        attempt.kill_reason = attempt.term_sent = None
        attempt.kill_sent = False
        try:
            spawn(attempt, ["/bin/sh", "-c", command], env, header)
        except OSError as error:
            self._remove_worktree(attempt)
            self._turn_back(entry, "verify could not start", f"  - {storage_error(error)}", attempt.worker)
            return
        self.running[attempt.slot] = attempt
        self._watch(attempt)
        self.progress.landing(entry, "verifying", f"{command} in its worktree")

    def _verified(self, attempt: Attempt, code: int | None) -> None:
        entry = self.entries[attempt.task_id]
        entry.duration_s += time.monotonic() - attempt.started
        self._remove_worktree(attempt)
        if code == 0:
            entry.verified = True
            self._submit(entry, attempt.verify)
            return
        entry.verified = False
        why = attempt.kill_reason or (describe_exit(code).split(" without")[0])
        self._turn_back(entry, f"verify failed in the task's worktree ({why})",
                        _failure_detail(attempt.verify, code, _log_output(attempt.log), attempt.log), attempt.worker)  # fmt: skip

    def _submit(self, entry: TaskEntry, command: str | None) -> None:
        head = entry.commit or self.worktrees.starts.get(entry.task_id)
        branch = entry.branch or self.worktrees.branch(entry.task_id)
        if head is None:
            try:
                head = self.worktrees._git("rev-parse", f"refs/heads/{branch}", cwd=self.worktrees.repo)
            except HypervisorError as error:
                self._turn_back(entry, "its branch cannot be read", f"  - {error}", LANDER)
                return
        entry.branch, entry.commit = branch, head
        self._journal(entry.task_id, stage="queued", head=head, verify=command)
        self.landing_tasks.add(entry.task_id)
        entry.landing = "queued"
        self.landing.submit(Passed(entry.task_id, branch, head, command))
        self.progress.landing(entry, "queued", f"{branch} {head[:12]} to land on {self.land_branch}")
        self._state_changed = True

    def _journal(self, task_id: str, **fields: object) -> None:
        record = {"task_id": task_id, "branch": self.worktrees.branch(task_id), "into": self.land_branch,
                  "run_id": self.run_id, "at": iso(now()), **fields}  # fmt: skip
        try:
            self.journal.write(task_id, record)
        except OSError as error:
            self._storage_failed(error, f"{task_id}: the landing journal", stop=False, fatal=False)

    def _remove_worktree(self, attempt: Attempt) -> None:
        try:
            self.worktrees.remove(attempt.task_id)
        except HypervisorError as error:
            self.progress.note(f"{attempt.task_id}: worktree: {error}")

    def _turn_back(self, entry: TaskEntry, what: str, detail: str, who: str) -> None:
        """The work did not land: the task back to active (its retry starts from BRANCH) or to the dead letter."""
        task_id = entry.task_id
        self.landing_tasks.discard(task_id)
        entry.landing = "reopened"
        try:
            result = self.queue.turn_back(task_id, what, detail, who)
        except (HypervisorError, OSError) as error:
            message = storage_error(error) if isinstance(error, OSError) else error
            self._settle(entry, "lost", f"not landed: {what}; the task could not be reopened: {message}")
            self.progress.landing(entry, "reopened", entry.text)
            return
        self.journal.remove(task_id)
        self.land_reopened.append(task_id)
        if result["dead_letter"]:
            self._settle(entry, "dead_letter", f"max_attempts: {result['attempts']} attempts, the last not landed: "
                                               f"{what}")  # fmt: skip
        elif self.draining:
            self._settle(entry, "released", f"not landed: {what}; reopened, not retried because the run was drained")
        else:
            self._settle(entry, "released", f"not landed: {what}; reopened for another attempt", final=False)
        self.progress.landing(entry, "reopened", what)
        self._state_changed = True

    # -- what the landing thread reports ------------------------------------------------------------------------
    def _landing_event(self, event: tuple) -> None:
        kind, items, info = event
        for item in items:
            entry = self.entries.get(item.task_id)
            if entry is None:
                continue
            if kind == "state":
                entry.landing = info
                self.progress.landing(entry, info, f"onto {self.land_branch}")
            elif kind == "landed":
                self._landed(entry, item, info)
            elif kind == "conflict":
                entry.conflict_files = list(info)
                files = ", ".join(info) or "(git named none)"
                detail = (f"  - merging {item.branch} ({item.head[:12]}) onto {self.land_branch} conflicted in: "
                          f"{files}\n  - the next attempt starts from {self.land_branch} as it is now, which "
                          "holds the work that landed first: redo the change there")  # fmt: skip
                self._turn_back(entry, f"merge conflict with {self.land_branch} in {files}", detail, LANDER)
            elif kind == "failed":
                command, code, output, log = info
                detail = _failure_detail(command, code, output, log)
                self._turn_back(entry, f"verify failed on the merge with {self.land_branch}", detail, LANDER)
            elif kind in ("held", "error"):
                entry.landing = "held"
                self.land_held = info if kind == "held" else f"landing failed: {info}"
        if kind in ("held", "error"):
            self.progress.note(f"landing holds: {self.land_held}")
        self._state_changed = True

    def _landed(self, entry: TaskEntry, item: Passed, commit: str) -> None:
        self.landing_tasks.discard(entry.task_id)
        self.land_held = None
        entry.landed, entry.landed_commit, entry.landing = True, commit, "landed"
        try:
            self.queue.landed(entry.task_id, self.land_branch, commit, LANDER)
        except (HypervisorError, OSError) as error:
            message = storage_error(error) if isinstance(error, OSError) else error
            self._settle(entry, "lost", f"landed on {self.land_branch} at {commit[:12]}, but the task file could "
                                        f"not say so: {message}")  # fmt: skip
            return
        self.journal.remove(entry.task_id)
        self.land_landed.append(entry.task_id)
        base = entry.text if entry.text and entry.text != entry.status else "done"
        self._settle(entry, "done", f"{base} (landed on {self.land_branch} at {commit[:12]})")
        self.progress.landing(entry, "landed", f"on {self.land_branch} at {commit[:12]}")


def _log_output(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().split("\n", 1)[-1]
    except OSError:
        return ""


def _failure_detail(command: str | None, code: int | None, output: str, log: str) -> str:
    return (f"  - command: `{command}`\n  - exit code: {code if code is not None else 'none (killed)'}\n"
            f"  - output (last 40 lines; all of it in {log}):\n{output_tail(output)}")  # fmt: skip
