"""The scheduling loop of `hypervisor run`: claim tasks for N workers, watch them, settle outcomes, replace them."""

from __future__ import annotations

import os
import queue as queue_module
import signal
import socket
import threading
import time

from ..claims import views, workers
from ..claims.backend import ENV_BACKEND
from ..claims.queue import TaskQueue
from ..claims.records import claim_path
from ..core.config import command_for
from ..core.errors import HypervisorError, NothingToClaim, disk_failed, storage_error
from ..core.timeutil import humanize, iso, now
from .agents import Agent, Job, agent_for
from .options import RunOptions
from .processes import Attempt, install_interrupt_handler, send_signal, spawn
from .runs import OUTCOMES, RunFolder, TaskEntry, exit_code, new_run_id, skipped_preflight
from .settling import Settling
from .verifying import Verifying

__all__ = ["RunOptions", "Supervisor", "exit_code"]

RENEW_EVERY_MAX = 60.0
REDACTED_TOKEN = "<claim-token>"  # what --dry-run shows for the token each claim makes


class NullProgress:
    """The progress interface: the supervisor reports to it; it shows nothing."""

    def begin(self, supervisor: Supervisor) -> None: ...
    def started(self, attempt: Attempt) -> None: ...
    def finished(self, attempt: Attempt, entry: TaskEntry, retry: bool) -> None: ...
    def landing(self, entry: TaskEntry, state: str, text: str) -> None: ...
    def note(self, text: str) -> None: ...
    def refresh(self, supervisor: Supervisor) -> None: ...
    def end(self, summary: dict) -> None: ...


class Supervisor(Settling, Verifying):
    """Runs one batch: preflight, then keeps `workers` agent processes busy until the batch is empty."""

    def __init__(self, queue: TaskQueue, options: RunOptions, progress: NullProgress | None = None,
                 agent: Agent | None = None) -> None:  # fmt: skip
        self.queue = queue
        self.options = options
        self.agent = agent or agent_for(options.agent)
        self.progress = progress or NullProgress()
        self.run_id = new_run_id()
        self.folder = RunFolder(queue.store.state, self.run_id)
        self.max_attempts = queue.config.max_attempts
        self.lease = queue.config.lease_seconds
        self.renew_every = min(self.lease / 3, RENEW_EVERY_MAX)
        self.exits: queue_module.Queue = queue_module.Queue()
        self.running: dict[int, Attempt] = {}
        self.entries: dict[str, TaskEntry] = {}
        self.finished: set[str] = set()
        self.unclaimable: set[str] = set()  # tasks whose files refused the claim (not the disk: one file)
        self.eligible: set[str] = set()
        self.preflight_report: dict = {}
        self.reclaimed: list[dict] = []
        self.invalid: list[str] = []
        self._state_changed = False
        self._prepared = False
        self.started_at = now()
        self.started = time.monotonic()
        self.draining = False
        self.aborting = False
        self.error: str | None = None  # the first file the run could not write, as one line
        self._noted: set[tuple[str, str]] = set()
        self.worktrees = None
        self._suffix = self.run_id[-4:]

    # -- the run ------------------------------------------------------------------------------------------------
    def preflight(self) -> dict:
        """What the batch holds: ready tasks in order, and what is skipped and why (claims nothing)."""
        return views.preflight(self.queue, ids=self.options.ids, project=self.options.project)

    def prepare(self) -> None:
        """Everything that can fail before a claim is made: the agent's binary and files, the git repository."""
        if self._prepared:
            return
        self._prepared = True
        self.agent.check(self.options.project_dir)
        if self.options.isolation == "worktree":
            from .worktrees import Worktrees

            self.worktrees = Worktrees(self.options.project_dir, self.run_id)
            if self.options.land is not None:
                self._prepare_landing()

    def run(self, report: dict | None = None) -> dict:
        """Run the batch to its end (or a drain) and return the summary, also written to summary.json.

        `report`: this batch's preflight, if the caller just made it (it walks the whole store)."""
        self.prepare()
        self.queue.store.ensure_state()
        report = self.preflight_report = report or self.preflight()
        self.invalid = self.invalid_files()
        if self.invalid:
            self.progress.note(self.invalid_note())
        waiting = [item["id"] for item in report["skipped"]["blocked_deps"]]
        self.eligible = set(report["ready"]) | set(waiting)  # a task whose dependencies finish in this run runs
        self.folder.create()
        self._write_state("running", required=True)  # before any claim: a run nobody can watch does not start
        self.progress.begin(self)
        restore = self._install_signals()
        try:
            self._start_landing()
            while True:
                if not self.draining:
                    self._fill()
                if self._state_changed:  # once per round of exits and starts, after the replacements started
                    self._state_changed = False
                    self._write_state("running")
                if not self.running and self.exits.empty() and self._landing_done():
                    break
                self._wait()
        finally:
            restore()
            if self.running:  # an error in the loop itself: stop the workers, give their tasks back
                self.aborting = True
                self._stop_all("the supervisor failed")
                while self.running:
                    self._wait()
            self._stop_landing()
        status = "interrupted" if self.aborting else ("drained" if self.draining else "finished")
        summary = self.summary(status)
        try:
            self.folder.write_summary(summary)
        except OSError as error:
            self._storage_failed(error, "the run's summary", stop=False)
            summary["error"] = self.error
        self._write_state(status)
        self.progress.end(summary)
        return summary

    def _storage_failed(self, error: OSError, what: str, stop: bool = True, fatal: bool = True) -> str:
        """Note a file the run could not write (`what` it was for). If `fatal` (a claim, a start, an outcome or the
        summary was lost to it) the first such is the run's `error` (exit 1); a renewal or the live state that will
        be written again later is only noted. With `stop`, no new task is claimed: the disk is full, read-only or
        failing (or it is unclear which task's file it was), and every start would fail the same way; running
        workers finish."""
        message = str(storage_error(error))
        if fatal and self.error is None:
            self.error = message
        if stop and not self.draining:
            self.draining = True
            self.progress.note(f"{what}: {message}; no new tasks are started, running workers finish")
        elif (what, message) not in self._noted:  # once: a full disk fails every renewal and state update alike
            self.progress.note(f"{what}: {message}")
        self._noted.add((what, message))
        return message

    def _fill(self) -> None:
        while len(self.running) < self.options.workers and not self.draining:
            candidates = self.eligible - self.finished - self.unclaimable - {a.task_id for a in self.running.values()}
            candidates -= self.landing_tasks
            if not candidates:
                return
            slot = min(set(range(1, self.options.workers + 1)) - set(self.running))
            worker = f"w{slot}-{self._suffix}"
            try:
                claim = self.queue.claim_next(worker, ids=candidates, lease_seconds=self.lease, lands=self.land_branch)
            except NothingToClaim:
                return
            except OSError as error:  # the claim made nothing (its record is dropped if the file write failed)
                task_id = None if disk_failed(error) else self._task_of(error.filename, candidates)
                if task_id is None:
                    self._storage_failed(error, "claiming a task")
                    return
                self._storage_failed(error, f"{task_id}: claiming it (the task is left out of this run)", stop=False)
                self.unclaimable.add(task_id)  # one file refused (permissions, immutable): the others can run
                continue
            if "reclaimed_from" in claim:
                self.reclaimed.append({"task_id": claim["id"], "from": claim["reclaimed_from"]})
            self._start(slot, worker, claim)

    def _task_of(self, path: object, candidates: set[str]) -> str | None:
        """The task of `candidates` whose task file, claim record or lock is `path`, or None."""
        if not isinstance(path, (str, bytes)):
            return None
        path = os.fsdecode(path)
        store = self.queue.store
        for task_id in candidates:
            if path in (store.lock_path(task_id), claim_path(store.state, task_id)):
                return task_id
            try:
                if path == store.path_of(store.find(task_id, refresh=False)):
                    return task_id
            except HypervisorError:
                continue
        return None

    def _start(self, slot: int, worker: str, claim: dict) -> None:
        task_id = claim["id"]
        entry = self.entries.setdefault(task_id, TaskEntry(task_id, claim.get("title") or task_id))
        entry.attempts = claim.get("attempts") or entry.attempts + 1  # the count the claim wrote into the file
        entry.worker = worker
        entry.status = "running"
        log = self.folder.log_path(task_id, entry.attempts)
        entry.logs.append(log)
        attempt = Attempt(
            slot, worker, claim, entry.attempts, log, self.options.project_dir, self.queue.events_cursor()
        )
        self.running[slot] = attempt
        try:
            if self.land_branch is not None:
                self._journal(task_id, stage="working")
            if self.worktrees is not None:
                attempt.workdir = self.worktrees.open(task_id)
                if task_id in self.worktrees.restarted:
                    self.progress.note(f"{task_id}: {self.worktrees.restarted[task_id]}")
            self._spawn(attempt, claim)
        except BaseException as error:
            del self.running[slot]
            why = f"could not start the worker: {storage_error(error) if isinstance(error, OSError) else error}"
            if isinstance(error, OSError) and disk_failed(error):
                self._storage_failed(error, f"{task_id}: starting the worker")
            failed = self._give_back(attempt, count_attempt=False, reason=why)
            self._close_worktree(attempt, entry)
            if not isinstance(error, (OSError, HypervisorError)):
                raise
            if failed:
                self._settle(entry, "lost", f"{why}; the release failed: {failed}")
            else:
                self._settle(entry, "released", why)
            self.progress.finished(attempt, entry, retry=False)
            self._state_changed = True
            return
        self.progress.started(attempt)
        self._state_changed = True

    def _spawn(self, attempt: Attempt, claim: dict) -> None:
        task_file = os.path.join(self.queue.store.root, claim["path"]) if claim.get("path") else ""
        job = Job(attempt.task_id, attempt.title, task_file, attempt.token, attempt.worker,
                  attempt.number, self.max_attempts, self.run_id, attempt.workdir)  # fmt: skip
        argv = self.agent.argv(job)
        env = dict(os.environ)
        env.update(self.worker_env(job))
        header = (f"# hypervisor run {self.run_id}: {attempt.worker} on {attempt.task_id}, attempt "
                  f"{attempt.number}, started {iso(attempt.started_at)} in {attempt.workdir}\n")  # fmt: skip
        spawn(attempt, argv, env, header)
        self._watch(attempt)

    def _watch(self, attempt: Attempt) -> None:
        """From now: its timeout, its lease renewals, and a thread that reports its exit."""
        attempt.started = time.monotonic()
        attempt.deadline = attempt.started + self.options.timeout
        attempt.next_renewal = attempt.started + self.renew_every
        threading.Thread(target=self._await_exit, args=(attempt,), name=f"wait-{attempt.worker}", daemon=True).start()

    def worker_env(self, job: Job) -> dict[str, str]:
        """What a worker's environment adds to the supervisor's: the agent's own, then the claim variables."""
        env = dict(self.agent.env())
        env.update({
            workers.ENV_WORKER: "1",
            workers.ENV_TASK_ID: job.task_id,
            workers.ENV_CLAIM_TOKEN: job.token,
            workers.ENV_CLAIM: job.token,  # for MCP servers under Gemini CLI
            "HYPERVISOR_TASKS": self.queue.store.root,
            ENV_BACKEND: self.queue.claims.spec,
            "HYPERVISOR_RUN_ID": self.run_id,
            "HYPERVISOR_WORKER_NAME": job.worker,
        })  # fmt: skip
        return env

    def first_worker(self, report: dict) -> dict | None:
        """What the first worker of a run would be started with (for --dry-run): its task, command, folder and
        environment (beyond the supervisor's own), the claim token redacted: nothing is claimed. None if no task
        is ready."""
        if not report["ready"]:
            return None
        summary = self.queue.store.find(report["ready"][0], refresh=False)
        worker = f"w1-{self._suffix}"
        workdir = self.options.project_dir
        if self.worktrees is not None:  # made at the start, not for a dry run: where it will be
            workdir = os.path.normpath(os.path.join(self.worktrees.path(summary["id"]), self.worktrees.subdir))
        job = Job(summary["id"], summary["title"] or summary["id"], os.path.join(self.queue.store.root, summary["path"]),
                  REDACTED_TOKEN, worker, summary["attempts"] + 1, self.max_attempts, self.run_id, workdir)  # fmt: skip
        return {"task_id": job.task_id, "worker": worker, "attempt": job.attempt, "argv": self.agent.argv(job),
                "workdir": job.workdir, "env": self.worker_env(job)}  # fmt: skip

    def invalid_files(self) -> list[str]:
        """The task files under the root that cannot be read as tasks (paths): every run leaves them out."""
        return [item["path"] for item in self.queue.store.summaries(refresh=False)[1]]

    def invalid_note(self) -> str:
        step = command_for("validate", self.queue.store.root, self.queue.config)
        return f"{len(self.invalid)} task file(s) are invalid and were left out: `{step}` says why"

    def _await_exit(self, attempt: Attempt) -> None:
        try:
            code = attempt.proc.wait()  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - the exit must be reported whatever happened
            code = None
        self.exits.put((attempt, code))

    def _wait(self) -> None:
        """Handle the next worker exit, or the next timeout, renewal or signal, whichever comes first."""
        moment = time.monotonic()
        due = [a.deadline for a in self.running.values() if a.term_sent is None]
        due += [a.term_sent + self.options.kill_grace for a in self.running.values() if a.term_sent and not a.kill_sent]
        due += [a.next_renewal for a in self.running.values() if not a.claim_gone]
        wait = max(0.0, min([moment + 0.5, *due]) - moment)
        try:
            attempt, code, *rest = self.exits.get(timeout=wait)
        except queue_module.Empty:
            pass
        else:
            if isinstance(attempt, str):  # what the landing thread reports
                self._landing_event((attempt, code, *rest))
            else:
                self._finished(attempt, code)
        self._tick()
        self.progress.refresh(self)

    def _tick(self) -> None:
        if self.aborting:
            self._stop_all("interrupted")
        moment = time.monotonic()
        for attempt in list(self.running.values()):
            if attempt.term_sent is None and moment >= attempt.deadline:
                attempt.kill_reason = f"killed at the {humanize(self.options.timeout)} timeout"
                self.progress.note(f"{attempt.worker}: {attempt.task_id} {attempt.kill_reason}")
                send_signal(attempt, signal.SIGTERM)
                attempt.term_sent = moment
            elif attempt.term_sent is not None and not attempt.kill_sent and \
                    moment >= attempt.term_sent + self.options.kill_grace:  # fmt: skip
                send_signal(attempt, signal.SIGKILL)
                attempt.kill_sent = True
            if not attempt.claim_gone and moment >= attempt.next_renewal:
                attempt.next_renewal = moment + self.renew_every
                try:
                    self.queue.renew(attempt.task_id, token=attempt.token)
                except HypervisorError:
                    attempt.claim_gone = True  # finished by the worker, or lost: the exit tells which
                except OSError as error:  # the record stays as it was: tried again at the next renewal
                    self._storage_failed(error, f"{attempt.task_id}: renewing the lease", stop=False, fatal=False)

    def _stop_all(self, reason: str) -> None:
        for attempt in self.running.values():
            if attempt.term_sent is None:
                attempt.kill_reason = reason
                send_signal(attempt, signal.SIGTERM)
                attempt.term_sent = time.monotonic()

    # -- signals ------------------------------------------------------------------------------------------------
    def _install_signals(self):
        def on_interrupt(signum, frame) -> None:
            if self.draining or signum == signal.SIGTERM:
                self.aborting = self.draining = True
                self.progress.note("stopping: the running workers are being stopped and their tasks released")
            else:
                self.draining = True
                self.progress.note("draining: no new tasks; running workers finish "
                                   "(Ctrl-C again stops them and releases their tasks)")  # fmt: skip

        return install_interrupt_handler(on_interrupt)

    def drain(self) -> None:
        """Take no new tasks; let the running workers finish (what the first Ctrl-C does)."""
        self.draining = True

    # -- state on disk ------------------------------------------------------------------------------------------
    def counts(self, final: bool = False) -> dict:
        """Tasks by outcome (runs.OUTCOMES), then `running` and `pending` (of the batch, not started yet); once
        the run is over (`final`), those never started are `not_started` (they waited on dependencies that did
        not finish, or the run was drained)."""
        counts = {name: 0 for name in OUTCOMES}
        counts.update({"held": 0} if self.land_branch is not None else {})
        for task_id in self.finished:
            counts[self.entries[task_id].status] += 1
        waiting = len(
            self.eligible
            - self.finished
            - self.unclaimable
            - {a.task_id for a in self.running.values()}
            - self.landing_tasks
        )
        if final:
            counts["not_started"] = waiting
        else:
            counts["running"] = len(self.running)
            counts["pending"] = waiting
        counts.update({"landing": len(self.landing_tasks)} if self.land_branch is not None else {})
        return counts

    def _write_state(self, status: str, required: bool = False) -> None:
        """The live run.json (`hypervisor status`, the board): a run goes on without it (noted) unless `required`."""
        try:
            self._write_state_file(status)
        except OSError as error:
            if required:
                raise
            self._storage_failed(error, "the run's live state", stop=False, fatal=False)

    def _write_state_file(self, status: str) -> None:
        self.folder.write_state({
            "run_id": self.run_id,
            "status": status,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": iso(self.started_at),
            "updated_at": iso(now()),
            "agent": self.agent.name,
            "workers": self.options.workers,
            "isolation": self.options.isolation,
            "task_root": self.queue.store.root,
            "timeout_s": self.options.timeout,
            "max_attempts": self.max_attempts,
            "counts": self.counts(final=status != "running"),
            "running": [attempt.view() for attempt in sorted(self.running.values(), key=lambda a: a.slot)],
            "tasks": [entry.to_json() for entry in self.entries.values()],
            **({"land": self.land_view()} if self.land_branch is not None else {}),
            **({"error": self.error} if self.error else {}),
        })  # fmt: skip

    def summary(self, status: str) -> dict:
        report = self.preflight_report
        return {
            "run_id": self.run_id,
            "status": status,
            "started_at": iso(self.started_at),
            "finished_at": iso(now()),
            "runtime_seconds": round(time.monotonic() - self.started, 3),
            "total_tokens": sum(entry.tokens for entry in self.entries.values()),
            "agent": self.agent.name,
            "isolation": self.options.isolation,
            "task_root": self.queue.store.root,
            "max_attempts": self.max_attempts,
            "counts": {k: v for k, v in self.counts(final=True).items() if k not in ("not_started", "landing")},
            "workers": [entry.to_json() for entry in self.entries.values()],
            "skipped_preflight": skipped_preflight(report, set(self.entries), self.invalid),
            "reclaimed": self.reclaimed,
            **({"land": self.land_view()} if self.land_branch is not None else {}),
            **({"error": self.error} if self.error else {}),
        }
