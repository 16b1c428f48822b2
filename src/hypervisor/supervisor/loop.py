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
from .runs import RunFolder, TaskEntry, new_run_id, skipped_preflight
from .settling import Settling

RENEW_EVERY_MAX = 60.0
FAILED = ("dead_letter", "lost", "interrupted")


class NullProgress:
    """The progress interface: the supervisor reports to it; it shows nothing."""

    def begin(self, supervisor: Supervisor) -> None: ...
    def started(self, attempt: Attempt) -> None: ...
    def finished(self, attempt: Attempt, entry: TaskEntry, retry: bool) -> None: ...
    def note(self, text: str) -> None: ...
    def refresh(self, supervisor: Supervisor) -> None: ...
    def end(self, summary: dict) -> None: ...


class Supervisor(Settling):
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
        self.agent.check()
        if self.options.isolation == "worktree":
            from .worktrees import Worktrees

            self.worktrees = Worktrees(self.options.project_dir, self.run_id)

    def run(self, report: dict | None = None) -> dict:
        """Run the batch to its end (or a drain) and return the summary, also written to summary.json.

        `report`: this batch's preflight, if the caller just made it (it walks the whole store)."""
        self.prepare()
        self.queue.store.ensure_state()
        report = self.preflight_report = report or self.preflight()
        self.invalid = [item["path"] for item in self.queue.store.summaries(refresh=False)[1]]
        if self.invalid:
            step = command_for("validate", self.queue.store.root, self.queue.config)
            self.progress.note(f"{len(self.invalid)} task file(s) are invalid and were left out "
                               f"(`{step}` says why)")  # fmt: skip
        waiting = [item["id"] for item in report["skipped"]["blocked_deps"]]
        self.eligible = set(report["ready"]) | set(waiting)  # a task whose dependencies finish in this run runs
        self.folder.create()
        self._write_state("running", required=True)  # before any claim: a run nobody can watch does not start
        self.progress.begin(self)
        restore = self._install_signals()
        try:
            while True:
                if not self.draining:
                    self._fill()
                if self._state_changed:  # once per round of exits and starts, after the replacements started
                    self._state_changed = False
                    self._write_state("running")
                if not self.running:
                    break
                self._wait()
        finally:
            restore()
            if self.running:  # an error in the loop itself: stop the workers, give their tasks back
                self.aborting = True
                self._stop_all("the supervisor failed")
                while self.running:
                    self._wait()
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
            if not candidates:
                return
            slot = min(set(range(1, self.options.workers + 1)) - set(self.running))
            worker = f"w{slot}-{self._suffix}"
            try:
                claim = self.queue.claim_next(worker, ids=candidates, lease_seconds=self.lease)
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
        entry.attempts += 1
        entry.worker = worker
        entry.status = "running"
        log = self.folder.log_path(task_id, entry.attempts)
        entry.logs.append(log)
        attempt = Attempt(
            slot, worker, claim, entry.attempts, log, self.options.project_dir, self.queue.events_cursor()
        )
        self.running[slot] = attempt
        try:
            if self.worktrees is not None:
                attempt.workdir = self.worktrees.open(task_id)
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
        env.update(self.agent.env())
        env.update({
            workers.ENV_WORKER: "1",
            workers.ENV_TASK_ID: attempt.task_id,
            workers.ENV_CLAIM_TOKEN: attempt.token,
            workers.ENV_CLAIM: attempt.token,  # for MCP servers under Gemini CLI
            "HYPERVISOR_TASKS": self.queue.store.root,
            ENV_BACKEND: self.queue.claims.spec,
            "HYPERVISOR_RUN_ID": self.run_id,
            "HYPERVISOR_WORKER_NAME": attempt.worker,
        })  # fmt: skip
        header = (f"# hypervisor run {self.run_id}: {attempt.worker} on {attempt.task_id}, attempt "
                  f"{attempt.number}, started {iso(attempt.started_at)} in {attempt.workdir}\n")  # fmt: skip
        spawn(attempt, argv, env, header)
        attempt.started = time.monotonic()
        attempt.deadline = attempt.started + self.options.timeout
        attempt.next_renewal = attempt.started + self.renew_every
        threading.Thread(target=self._await_exit, args=(attempt,), name=f"wait-{attempt.worker}", daemon=True).start()

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
            attempt, code = self.exits.get(timeout=wait)
        except queue_module.Empty:
            pass
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
    def counts(self) -> dict:
        counts = {name: 0 for name in ("done", "blocked", "dead_letter", "released", "lost", "interrupted")}
        for task_id in self.finished:
            counts[self.entries[task_id].status] += 1
        counts["running"] = len(self.running)
        counts["pending"] = len(
            self.eligible - self.finished - self.unclaimable - {a.task_id for a in self.running.values()}
        )
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
            "counts": self.counts(),
            "running": [attempt.view() for attempt in sorted(self.running.values(), key=lambda a: a.slot)],
            "tasks": [entry.to_json() for entry in self.entries.values()],
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
            "counts": {k: v for k, v in self.counts().items() if k not in ("running", "pending")},
            "workers": [entry.to_json() for entry in self.entries.values()],
            "skipped_preflight": skipped_preflight(report, set(self.entries), self.invalid),
            "reclaimed": self.reclaimed,
            **({"error": self.error} if self.error else {}),
        }


def exit_code(summary: dict) -> int:
    """0: the batch ran; 1: a task was dead-lettered or lost, or a file could not be written; 130: interrupted."""
    if summary.get("status") == "interrupted":
        return 130
    return 1 if summary.get("error") or any(entry["status"] in FAILED for entry in summary["workers"]) else 0
