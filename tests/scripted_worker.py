"""A stand-in agent for real-process supervisor tests: `python scripted_worker.py BEHAVIOUR [ARG]`.

It works the task the supervisor claimed for it (HYPERVISOR_TASK_ID + HYPERVISOR_CLAIM_TOKEN) through the package.
BEHAVIOUR `task` reads it from the task's own frontmatter field `script:` (e.g. `script: sleep-complete 2`).
  complete              complete the task
  block                 block it with a reason
  sleep-complete SECS   sleep, then complete
  wait-complete FILE    wait until FILE exists (the test creates it when it is done looking), then complete
  edit-wait-complete FILE  as a model would: stream an assistant message with its token usage and journal an
                        edit (what the hooks record), then wait-complete FILE (the board's browser test)
  hang                  sleep for an hour (the supervisor's timeout must end it)
  crash                 SIGKILL itself mid-task
  write-file NAME       write NAME in the working folder, then complete (worktree tests)
  commit-file NAME      write NAME, git commit it, then complete with the commit
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from hypervisor.claims.queue import TaskQueue
from hypervisor.core.config import Config
from hypervisor.tasks.store import TaskStore


def main() -> None:
    task_id, token = os.environ["HYPERVISOR_TASK_ID"], os.environ["HYPERVISOR_CLAIM_TOKEN"]
    queue = TaskQueue(TaskStore(os.environ["HYPERVISOR_TASKS"]), Config())
    words = sys.argv[1:]
    if words == ["task"]:
        words = str(queue.store.read(queue.store.find(task_id))[1].data["script"]).split()
    behaviour, arg = words[0], (words[1] if len(words) > 1 else "")
    print(f"worker {os.environ.get('HYPERVISOR_WORKER_NAME')} on {task_id}: {behaviour}", flush=True)
    commit = None
    if behaviour == "block":
        queue.block(task_id, token=token, reason=f"{task_id} needs a person")
        return
    if behaviour == "sleep-complete":
        time.sleep(float(arg))
    elif behaviour == "edit-wait-complete":
        from hypervisor.claims import workers

        usage = {"input_tokens": 1200, "output_tokens": 34}
        print(json.dumps({"type": "assistant", "message": {"id": "m1", "usage": usage}}), flush=True)
        workers.record_call(queue.store.state, task_id, token, "Edit", ["src/board_demo.py"], False)
        while not os.path.exists(arg):
            time.sleep(0.02)
    elif behaviour == "wait-complete":
        while not os.path.exists(arg):
            time.sleep(0.02)
    elif behaviour == "hang":
        time.sleep(3600)
    elif behaviour == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif behaviour in ("write-file", "commit-file"):
        with open(arg, "w") as handle:
            handle.write(f"work for {task_id}\n")
        if behaviour == "commit-file":
            git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
            subprocess.run([*git, "add", arg], check=True)
            subprocess.run([*git, "commit", "-qm", f"{task_id}: work"], check=True)
            commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    queue.complete(task_id, token=token, summary=f"{behaviour} done for {task_id}", commit=commit)


if __name__ == "__main__":
    main()
