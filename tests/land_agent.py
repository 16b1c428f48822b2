"""A command agent for the landing tests: `python land_agent.py`, started by `hypervisor run --agent` in the task's
worktree. It reads what to do from the task's frontmatter field `edit:` and does it to the files it finds there,
from their current content (so a retry that starts from a newer base redoes the change on it), then completes:
  append FILE WORD     line 1 of FILE gets " WORD" at its end (FILE is created holding WORD if missing)
  write FILE TEXT      FILE holds TEXT
  nothing              change nothing
With `together: DIR N` it first waits until N tasks have started (each leaves its id in DIR), so that all of them
branch from the same base.
"""

from __future__ import annotations

import os
import sys
import time

from hypervisor.claims.queue import TaskQueue
from hypervisor.core.config import Config
from hypervisor.tasks.store import TaskStore


def main() -> None:
    task_id, token = os.environ["HYPERVISOR_TASK_ID"], os.environ["HYPERVISOR_CLAIM_TOKEN"]
    queue = TaskQueue(TaskStore(os.environ["HYPERVISOR_TASKS"]), Config())
    data = queue.store.read(queue.store.find(task_id))[1].data
    if data.get("together"):
        folder, count = str(data["together"]).rsplit(" ", 1)
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, task_id), "w").close()
        while len(os.listdir(folder)) < int(count):
            time.sleep(0.02)
    words = str(data["edit"]).split(" ", 2)
    action = words[0]
    if action == "append":
        name, word = words[1], words[2]
        lines = open(name).read().splitlines() if os.path.exists(name) else []
        lines = [f"{lines[0]} {word}", *lines[1:]] if lines else [word]
        with open(name, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    elif action == "write":
        with open(words[1], "w") as handle:
            handle.write(words[2] + "\n")
    elif action != "nothing":
        sys.exit(f"unknown edit {action!r}")
    print(f"{task_id}: {' '.join(words)} in {os.getcwd()}", flush=True)
    queue.complete(task_id, token=token, summary=f"{action} for {task_id}")


if __name__ == "__main__":
    main()
