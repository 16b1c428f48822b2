"""Per-task git worktrees for `hypervisor run --isolation worktree`: branch hypervisor/<task-id> (merged only by
`--land`, supervisor/landing.py)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading

from ..core.errors import HypervisorError, UsageError

BRANCH_PREFIX = "hypervisor/"
FALLBACK_IDENTITY = ("-c", "user.name=hypervisor", "-c", "user.email=hypervisor@localhost")
WORKTREES_DIR = "hypervisor-worktrees"
# `git worktree add/remove` and branch changes from the loop and the landing thread, one at a time (they write the
# repository's shared worktree and ref files).
GIT_LOCK = threading.Lock()


class Worktrees:
    """Opens a worktree per task (reusing the task's branch on a retry), commits what a worker left uncommitted,
    removes the worktree and keeps the branch. Worktrees live outside the repository, under the temp folder."""

    def __init__(self, project_dir: str, run_id: str) -> None:
        self.project_dir = os.path.abspath(project_dir)
        try:
            self.repo = self._git("rev-parse", "--show-toplevel", cwd=self.project_dir)
        except HypervisorError:
            raise UsageError(f"--isolation worktree needs a git repository; {self.project_dir} is not in one "
                             "(run `git init` and commit, or use --isolation none)") from None  # fmt: skip
        try:
            self.base = self._git("rev-parse", "--verify", "HEAD^{commit}", cwd=self.repo)
        except HypervisorError:
            raise UsageError(f"--isolation worktree: {self.repo} has no commit yet to branch from; "
                             "commit once first") from None  # fmt: skip
        self.subdir = os.path.relpath(self.project_dir, self.repo)
        self.root = os.path.join(tempfile.gettempdir(), WORKTREES_DIR, run_id)
        self.identity = () if self._has_identity() else FALLBACK_IDENTITY
        self.upstream: str | None = None  # with --land: the landing branch, which new and retried work starts from
        self.starts: dict[str, str] = {}  # task id -> the commit its worktree started from
        self.restarted: dict[str, str] = {}  # task id -> why its retry starts from the landing branch's tree

    def branch(self, task_id: str) -> str:
        return BRANCH_PREFIX + task_id

    def path(self, task_id: str) -> str:
        return os.path.join(self.root, task_id)

    def open(self, task_id: str) -> str:
        """Check out the task's branch (created from HEAD the first time) in a fresh worktree; returns the folder
        the worker starts in (the project folder's place inside it)."""
        path, branch = self.path(task_id), self.branch(task_id)
        os.makedirs(self.root, exist_ok=True)
        base = self._git("rev-parse", "--verify", f"{self.upstream}^{{commit}}", cwd=self.repo) \
            if self.upstream else self.base  # fmt: skip
        with GIT_LOCK:
            if self._branch_exists(branch):
                self._git("worktree", "add", path, branch, cwd=self.repo)
                existed = True
            else:
                self._git("worktree", "add", "-b", branch, path, base, cwd=self.repo)
                existed = False
        if existed and self.upstream:
            self._catch_up(task_id, path, base)
        self.starts[task_id] = self._git("rev-parse", "HEAD", cwd=path)
        return os.path.normpath(os.path.join(path, self.subdir))

    def _catch_up(self, task_id: str, path: str, base: str) -> None:
        """A retry under --land continues its branch from the landing branch's tip `base`: merged into it; where
        that conflicts, the branch goes on with one commit holding `base`'s tree (its old work stays in its
        history, and the agent redoes it on the new base)."""
        self.restarted.pop(task_id, None)
        try:
            self._git(*self.identity, "merge", "--no-edit", "--no-verify", "-q", base, cwd=path)
            return
        except HypervisorError:
            files = self._git("diff", "--name-only", "--diff-filter=U", cwd=path).split()
            self._git("merge", "--abort", cwd=path)
        old = self._git("rev-parse", "HEAD", cwd=path)
        message = (f"{task_id}: start again from {self.upstream.removeprefix('refs/heads/')} (merging it conflicted in {', '.join(files) or '?'});"
                   f" the previous attempt's work is {old}")  # fmt: skip
        new = self._git(*self.identity, "commit-tree", f"{base}^{{tree}}", "-p", old, "-p", base, "-m", message,
                        cwd=path)  # fmt: skip
        self._git("reset", "-q", "--hard", new, cwd=path)
        self.restarted[task_id] = message

    def commit_leftovers(self, task_id: str, worker: str) -> str | None:
        """Commit what the worker left uncommitted in the task's worktree; its head commit (None: no worktree)."""
        path = self.path(task_id)
        if not os.path.isdir(path):
            return None
        if self._git("status", "--porcelain", cwd=path):
            self._git("add", "-A", cwd=path)
            self._git(*self.identity, "commit", "--no-verify", "-q", "-m",
                      f"{task_id}: work left uncommitted by {worker} (hypervisor)", cwd=path)  # fmt: skip
        return self._git("rev-parse", "HEAD", cwd=path)

    def remove(self, task_id: str) -> None:
        """Remove the task's worktree (what is in it and not committed goes with it), keeping its branch."""
        path = self.path(task_id)
        if os.path.isdir(path):
            with GIT_LOCK:
                self._git("worktree", "remove", "--force", path, cwd=self.repo)

    def close(self, task_id: str, worker: str) -> tuple[str | None, str | None]:
        """Commit anything left uncommitted, remove the worktree, and return (branch, head commit) if the branch
        holds work; an untouched branch is deleted and (None, None) returned."""
        branch = self.branch(task_id)
        head = self.commit_leftovers(task_id, worker)
        if head is None:
            return None, None
        self.remove(task_id)
        if head == self.base:
            with GIT_LOCK:
                self._git("branch", "-D", branch, cwd=self.repo)
            return None, None
        return branch, head

    def _branch_exists(self, branch: str) -> bool:
        try:
            self._git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=self.repo)
        except HypervisorError:
            return False
        return True

    def _has_identity(self) -> bool:
        try:
            return bool(self._git("config", "user.email", cwd=self.repo))
        except HypervisorError:
            return False

    @staticmethod
    def _git(*args: str, cwd: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=120)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as error:
            raise HypervisorError(f"git {' '.join(args)} failed: {error}") from None
        if done.returncode != 0:
            raise HypervisorError(f"git {' '.join(args)} failed in {cwd}: {done.stderr.strip() or done.returncode}")
        return done.stdout.strip()
