"""What `hypervisor run` was asked to do: its options, checked."""

from __future__ import annotations

import os

from ..core.errors import UsageError

MAX_WORKERS = 32
KILL_GRACE_SECONDS = 5.0
ISOLATIONS = ("none", "worktree")


class RunOptions:
    """What `hypervisor run` was asked to do."""

    def __init__(self, workers: int = 4, agent: str = "triage", ids: list[str] | None = None,
                 project: str | None = None, timeout: float = 30 * 60, isolation: str = "none",
                 project_dir: str | None = None, kill_grace: float = KILL_GRACE_SECONDS, land: str | None = None,
                 land_batch: int = 1) -> None:  # fmt: skip
        if not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
            raise UsageError(f"--workers {workers!r} is not allowed: use 1 to {MAX_WORKERS}")
        if isolation not in ISOLATIONS:
            raise UsageError(f"--isolation {isolation!r} is not allowed: use {' or '.join(ISOLATIONS)}")
        if timeout <= 0:
            raise UsageError(f"--timeout {timeout!r} is not allowed: give a positive duration such as 30m")
        if land is not None and isolation != "worktree":
            raise UsageError("--land needs --isolation worktree (each task's work is a branch to land): run "
                             "`hypervisor run --isolation worktree --land`")  # fmt: skip
        if not isinstance(land_batch, int) or land_batch < 1:
            raise UsageError(f"--land-batch {land_batch!r} is not allowed: use 1 or more")
        if land_batch > 1 and land is None:
            raise UsageError("--land-batch needs --land: run `hypervisor run --isolation worktree --land --land-batch "
                             f"{land_batch}`")  # fmt: skip
        self.land = land  # None: no landing; "": the branch checked out at the project root
        self.land_batch = land_batch
        self.workers = workers
        self.agent = agent
        self.ids = ids
        self.project = project
        self.timeout = timeout
        self.isolation = isolation
        self.project_dir = os.path.abspath(project_dir or os.getcwd())
        self.kill_grace = kill_grace
