"""Per-task git worktrees for `hypervisor run --isolation worktree`: branch hypervisor/<task-id>, never merged."""

from __future__ import annotations

import os
import subprocess
import tempfile

from ..core.errors import HypervisorError, UsageError

BRANCH_PREFIX = "hypervisor/"
FALLBACK_IDENTITY = ("-c", "user.name=hypervisor", "-c", "user.email=hypervisor@localhost")


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
        self.root = os.path.join(tempfile.gettempdir(), "hypervisor-worktrees", run_id)
        self.identity = () if self._has_identity() else FALLBACK_IDENTITY

    def branch(self, task_id: str) -> str:
        return BRANCH_PREFIX + task_id

    def path(self, task_id: str) -> str:
        return os.path.join(self.root, task_id)

    def open(self, task_id: str) -> str:
        """Check out the task's branch (created from HEAD the first time) in a fresh worktree; returns the folder
        the worker starts in (the project folder's place inside it)."""
        path, branch = self.path(task_id), self.branch(task_id)
        os.makedirs(self.root, exist_ok=True)
        if self._branch_exists(branch):
            self._git("worktree", "add", path, branch, cwd=self.repo)
        else:
            self._git("worktree", "add", "-b", branch, path, self.base, cwd=self.repo)
        return os.path.normpath(os.path.join(path, self.subdir))

    def close(self, task_id: str, worker: str) -> tuple[str | None, str | None]:
        """Commit anything left uncommitted, remove the worktree, and return (branch, head commit) if the branch
        holds work; an untouched branch is deleted and (None, None) returned."""
        path, branch = self.path(task_id), self.branch(task_id)
        if not os.path.isdir(path):
            return None, None
        if self._git("status", "--porcelain", cwd=path):
            self._git("add", "-A", cwd=path)
            self._git(*self.identity, "commit", "--no-verify", "-q", "-m",
                      f"{task_id}: work left uncommitted by {worker} (hypervisor)", cwd=path)  # fmt: skip
        head = self._git("rev-parse", "HEAD", cwd=path)
        self._git("worktree", "remove", "--force", path, cwd=self.repo)
        if head == self.base:
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
