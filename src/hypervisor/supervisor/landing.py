"""The landing queue of `hypervisor run --land`: passed task branches, in pass order, merged onto BRANCH in a scratch
worktree and verified there; BRANCH moves by fast-forward only when that passes (--land-batch: bors' batches,
bisected on failure). It runs in a thread of its own and reports to the supervisor's loop through `post`."""

from __future__ import annotations

import os
import threading

from ..core import fsutil
from ..core.errors import HypervisorError
from .processes import kill_leftovers, run_to_end
from .worktrees import GIT_LOCK, Worktrees

ENV_LAND_RUN = "HYPERVISOR_LAND_RUN"  # in a verify's environment: the run it belongs to (a dead run's are killed)
HOLD_RETRY_SECONDS = 2.0
JOURNAL_DIR = "landing"


class Passed:
    """One task's work waiting to land: its branch at `head`, and the verify command it must pass."""

    def __init__(self, task_id: str, branch: str, head: str, verify: str | None) -> None:
        self.task_id = task_id
        self.branch = branch
        self.head = head
        self.verify = verify


class _Stopped(Exception):
    """The run stops landing (interrupted, or it ended while landing held)."""


class Landing:
    """The queue and the thread that lands it. `post((kind, items, info))` reports to the supervisor:
    state (merging, verifying), landed (info: the commit BRANCH moved to), conflict (info: the files), failed (info:
    (command, exit code, output)), held (info: why BRANCH could not move), error (info: what went wrong)."""

    def __init__(self, worktrees: Worktrees, branch: str, run_id: str, logs: str, timeout: float,
                 kill_grace: float, batch: int, post, project_verify: str | None = None) -> None:  # fmt: skip
        self.git = worktrees
        self.repo = worktrees.repo
        self.branch = branch
        self.ref = f"refs/heads/{branch}"
        self.run_id = run_id
        self.logs = logs
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.batch = batch
        self.post = post
        self.project_verify = project_verify
        self.pending: list[Passed] = []
        self.conflicts: list[tuple[Passed, list[str]]] = []  # reported once the batch is through
        self.busy: list[Passed] = []
        self.cond = threading.Condition()
        self.stop_event = threading.Event()
        self.held: str | None = None
        self.start_tip = self.tip()
        self.rounds = 0
        self.thread = threading.Thread(target=self._main, name="landing", daemon=True)

    # -- the supervisor's side ----------------------------------------------------------------------------------
    def start(self) -> None:
        os.makedirs(self.logs, exist_ok=True)
        self.thread.start()

    def submit(self, item: Passed) -> None:
        with self.cond:
            self.pending.append(item)
            self.cond.notify()

    def idle(self) -> bool:
        """Nothing waits and nothing is being landed, or landing holds (everything waits behind what holds)."""
        with self.cond:
            return (not self.pending and not self.busy) or self.held is not None

    def waiting(self) -> list[str]:
        """The tasks not landed yet: being landed first, then queued."""
        with self.cond:
            return [item.task_id for item in self.busy + self.pending]

    def stop(self) -> None:
        """Stop landing (a running verify is killed); what was not landed stays in review for the next run."""
        self.stop_event.set()
        with self.cond:
            self.cond.notify()
        if self.thread.is_alive():
            self.thread.join()

    # -- the thread ---------------------------------------------------------------------------------------------
    def _main(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.stop_event.is_set():
                    self.cond.wait()
                if self.stop_event.is_set():
                    return
                self.busy, self.pending = self.pending[: self.batch], self.pending[self.batch :]
            try:
                self._land(list(self.busy))
                for item, files in self.conflicts:  # after the batch landed: a retry then starts from it
                    self.post(("conflict", [item], files))
            except _Stopped:
                return
            except Exception as error:  # noqa: BLE001 - reported; the tasks stay in review for the next run
                self.post(("error", list(self.busy), str(error)))
            finally:
                self.conflicts = []
                with self.cond:
                    self.busy = []
                    self.held = None

    def _land(self, items: list[Passed]) -> None:
        while True:
            tip = self.tip()
            self.post(("state", items, "merging"))
            merged, commit, failure = self._try(items, tip)
            if not merged:
                return
            if failure is not None:
                if len(merged) == 1:
                    self.post(("failed", merged, failure))
                    return
                half = len(merged) // 2  # bisect: the first half on BRANCH, then the rest on top of it
                self._land(merged[:half])
                self._land(merged[half:])
                return
            if commit == tip or self._advance(tip, commit, merged):
                self.post(("landed", merged, commit))
                return
            items = merged  # BRANCH moved meanwhile (someone committed on it): merge again on its new tip

    def _try(self, items: list[Passed], tip: str) -> tuple[list[Passed], str, tuple | None]:
        """Merge `items` onto `tip` in a scratch worktree (a conflicting one is reported and left out) and verify
        the result: (the items in it, its commit, None or the failure (command, exit code, output))."""
        self.rounds += 1
        scratch = os.path.join(self.git.root, f".land-{self.rounds}")
        os.makedirs(self.git.root, exist_ok=True)
        with GIT_LOCK:
            self._git("worktree", "add", "--detach", scratch, tip, cwd=self.repo)
        try:
            merged = []
            for item in items:
                if self._contains(item.head, "HEAD", scratch):
                    merged.append(item)  # already on BRANCH: nothing to merge
                    continue
                try:
                    self._git(*self.git.identity, "merge", "--no-ff", "--no-edit", "--no-verify", "-q", "-m",
                              f"merge {item.branch} ({item.task_id})", item.head, cwd=scratch)  # fmt: skip
                except HypervisorError:
                    files = self._git("diff", "--name-only", "--diff-filter=U", cwd=scratch).split()
                    self._git("merge", "--abort", cwd=scratch)
                    self.conflicts.append((item, files))
                    continue
                merged.append(item)
            if not merged:
                return [], "", None
            heads = [item.head for item in merged if not self._contains(item.head, tip, scratch)]
            if not heads:
                return merged, tip, None
            names = ", ".join(item.task_id for item in merged)
            message = f"hypervisor: land {names} (run {self.run_id})\n\n" + "\n".join(
                f"{item.task_id}: {item.branch} {item.head}" for item in merged
            )
            parents = [arg for head in heads for arg in ("-p", head)]
            commit = self._git(*self.git.identity, "commit-tree", "HEAD^{tree}", "-p", tip, *parents, "-m", message,
                               cwd=scratch)  # fmt: skip
            self.post(("state", merged, "verifying"))
            return merged, commit, self._verify(scratch, merged)
        finally:
            with GIT_LOCK:
                try:
                    self._git("worktree", "remove", "--force", scratch, cwd=self.repo)
                except HypervisorError:
                    pass

    def _verify(self, scratch: str, items: list[Passed]) -> tuple | None:
        """The project's verify, then each task's own, on the merged tree: None, or the first failure."""
        commands = list(dict.fromkeys(c for c in [self.project_verify, *(i.verify for i in items)] if c))
        cwd = os.path.normpath(os.path.join(scratch, self.git.subdir))
        env = dict(os.environ, HYPERVISOR_VERIFY="merged", HYPERVISOR_RUN_ID=self.run_id,
                   HYPERVISOR_LAND_TASKS=" ".join(item.task_id for item in items), **{ENV_LAND_RUN: self.run_id})  # fmt: skip
        log = os.path.join(self.logs, f"land-{self.rounds}.log")
        for command in commands:
            header = f"# verify of the merge of {', '.join(i.task_id for i in items)} onto {self.branch}: {command}\n"
            code, output = run_to_end(["/bin/sh", "-c", command], cwd, env, log, header, self.timeout,
                                      self.kill_grace, self.stop_event)  # fmt: skip
            if self.stop_event.is_set():
                raise _Stopped
            if code != 0:
                return command, code, output, log
        return None

    def _advance(self, tip: str, commit: str, items: list[Passed]) -> bool:
        """Fast-forward BRANCH from `tip` to `commit`: its ref (compare-and-swap), or its checkout as `git merge
        --ff-only` moves it. False if BRANCH moved meanwhile; holds (retrying) while git refuses."""
        while True:
            if self.tip() != tip:
                return False
            checkout = self.checkout()
            try:
                if checkout is None:
                    self._git("update-ref", "-m", f"hypervisor land (run {self.run_id})", self.ref, commit, tip,
                              cwd=self.repo)  # fmt: skip
                else:
                    self._git("merge", "--ff-only", "-q", commit, cwd=checkout)
                with self.cond:
                    self.held = None
                return True
            except HypervisorError as error:
                if self.tip() != tip:
                    return False
                if checkout is None:
                    raise
                reason = f"{self.branch} is checked out in {checkout} and git refuses to move it: {error}"
                if self.held != reason:
                    with self.cond:
                        self.held = reason
                    self.post(("held", items, reason))
            if self.stop_event.wait(HOLD_RETRY_SECONDS):
                raise _Stopped

    # -- git ----------------------------------------------------------------------------------------------------
    def tip(self) -> str:
        return self._git("rev-parse", "--verify", f"{self.ref}^{{commit}}", cwd=self.repo)

    def checkout(self) -> str | None:
        """The worktree that has BRANCH checked out, if one has."""
        for block in self._git("worktree", "list", "--porcelain", cwd=self.repo).split("\n\n"):
            lines = dict(line.partition(" ")[::2] for line in block.splitlines())
            if lines.get("branch") == self.ref and "worktree" in lines:
                return lines["worktree"]
        return None

    def _contains(self, commit: str, tip: str, cwd: str) -> bool:
        try:
            self._git("merge-base", "--is-ancestor", commit, tip, cwd=cwd)
        except HypervisorError:
            return False
        return True

    def _git(self, *args: str, cwd: str) -> str:
        return Worktrees._git(*args, cwd=cwd)


def branch_at_root(project_dir: str) -> str:
    """The branch checked out where the run starts (the default --land BRANCH); UsageError-worthy text if none."""
    return Worktrees._git("symbolic-ref", "--quiet", "--short", "HEAD", cwd=project_dir)


def clean_dead_runs(worktrees: Worktrees, alive) -> list[str]:
    """Remove the scratch worktrees of runs that are gone (`alive(run_id)` False) and kill their verify processes;
    the paths removed."""
    removed = []
    base = os.path.dirname(worktrees.root)
    listing = Worktrees._git("worktree", "list", "--porcelain", cwd=worktrees.repo)
    for block in listing.split("\n\n"):
        path = dict(line.partition(" ")[::2] for line in block.splitlines()).get("worktree", "")
        parent, name = os.path.split(path)
        run_id = os.path.basename(parent)
        if os.path.dirname(parent) != base or not name.startswith(".land-") or alive(run_id):
            continue
        kill_leftovers(run_id, ENV_LAND_RUN)
        with GIT_LOCK:
            Worktrees._git("worktree", "remove", "--force", path, cwd=worktrees.repo)
        removed.append(path)
    with GIT_LOCK:
        Worktrees._git("worktree", "prune", cwd=worktrees.repo)
    return removed


class Journal:
    """`<state>/landing/<task>.json`: the tasks a run claimed to land on a branch, until they landed or went back;
    what a new run finds there after a crash it finishes (supervisor/verifying.py)."""

    def __init__(self, state: str) -> None:
        self.folder = os.path.join(state, JOURNAL_DIR)

    def write(self, task_id: str, record: dict) -> None:
        os.makedirs(self.folder, exist_ok=True)
        fsutil.atomic_write_json(os.path.join(self.folder, task_id + ".json"), record)

    def remove(self, task_id: str) -> None:
        try:
            os.unlink(os.path.join(self.folder, task_id + ".json"))
        except FileNotFoundError:
            pass

    def records(self) -> dict[str, dict]:
        try:
            names = sorted(os.listdir(self.folder))
        except FileNotFoundError:
            return {}
        found = {}
        for name in names:
            if name.endswith(".json") and not name.startswith("."):
                try:
                    record = fsutil.read_json(os.path.join(self.folder, name))
                except ValueError:
                    continue
                if isinstance(record, dict):
                    found[name[:-5]] = record
        return found
