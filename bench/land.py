"""Landing overhead per task: `hypervisor run --isolation worktree --land` beside the same run without --land and a
bare `git merge` + verify of the same branches, in one run.

Each round makes three identical git repositories of --tasks tasks (a tiny agent writes one file per task and
completes it; verify is a `python3 -S` script that reads the files) and times, interleaved round by round:
  worktree  `hypervisor run --isolation worktree --workers 1`: agents in worktrees, branches left unmerged
  land      the same with `--land`: verify in each task's worktree, then the landing queue (scratch worktree, merge,
            verify of the merged tree, fast-forward of the checked-out branch, the task marked done)
  bare      on the worktree run's repository afterwards: `git merge --no-ff` of each branch in the checkout, then
            the same verify, one branch after the other (what a person would do by hand, untested merges aside)
Landing's cost per task is (land - worktree) / tasks; the ratio to bare / tasks is what the queue adds over a bare
merge and verify (it runs verify twice per task: in the worktree and on the merge).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import emit, source_fingerprint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(REPO, "src")
AGENT = """import os, sys
sys.path.insert(0, {src!r})
from hypervisor.claims.queue import TaskQueue
from hypervisor.tasks.store import TaskStore
env = os.environ
with open(env["HYPERVISOR_TASK_ID"] + ".txt", "w") as handle:
    handle.write("work\\n")
TaskQueue(TaskStore(env["HYPERVISOR_TASKS"])).complete(env["HYPERVISOR_TASK_ID"], token=env["HYPERVISOR_CLAIM_TOKEN"],
                                                       summary="bench")
"""
VERIFY = """import glob, sys
sys.exit(0 if all(open(path).read() == "work\\n" for path in glob.glob("*.txt")) else 1)
"""
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]


def git(*args: str, cwd: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(base: str, name: str, tasks: int) -> str:
    repo = os.path.join(base, name)
    os.makedirs(os.path.join(repo, "tasks"))
    with open(os.path.join(repo, "verify.py"), "w") as handle:
        handle.write(VERIFY)
    with open(os.path.join(repo, ".hypervisor.yaml"), "w") as handle:
        handle.write(f'verify: "{sys.executable} -S verify.py"\n')
    for index in range(tasks):
        with open(os.path.join(repo, "tasks", f"t{index:03d}.md"), "w") as handle:
            handle.write(f"---\ntitle: task {index}\n---\nWrite t{index:03d}.txt.\n")
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "base", cwd=repo)
    return repo


def run_supervisor(repo: str, agent: str, land: bool) -> float:
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop("HYPERVISOR_TASKS", None)
    argv = [sys.executable, "-m", "hypervisor", "run", "--workers", "1", "--agent", f"{sys.executable} {agent}",
            "--isolation", "worktree", "--json", *(["--land"] if land else [])]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True)
    took = time.monotonic() - start
    summary = json.loads(done.stdout)
    statuses = {entry["status"] for entry in summary["workers"]}
    if done.returncode != 0 or statuses != {"done"} or (land and len(summary["land"]["landed"]) != len(
            summary["workers"])):  # fmt: skip
        sys.exit(f"bench: the {'land' if land else 'worktree'} run failed: {done.stderr[-2000:]}")
    return took


def bare_merge(repo: str) -> float:
    branches = git("for-each-ref", "--format=%(refname:short)", "refs/heads/hypervisor/", cwd=repo).split()
    start = time.monotonic()
    for branch in branches:
        git("merge", "--no-ff", "--no-edit", "-q", branch, cwd=repo)
        subprocess.run([sys.executable, "-S", "verify.py"], cwd=repo, check=True)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    fingerprint = source_fingerprint()
    times: dict[str, list[float]] = {"worktree": [], "land": [], "bare": []}
    base = tempfile.mkdtemp(prefix="hypervisor-bench-land-")
    try:
        agent = os.path.join(base, "agent.py")
        with open(agent, "w") as handle:
            handle.write(AGENT.format(src=SRC))
        for round_no in range(args.rounds):
            order = ("worktree", "land") if round_no % 2 == 0 else ("land", "worktree")
            repos = {}
            for mode in order:
                repos[mode] = make_repo(base, f"{mode}-{round_no}", args.tasks)
                times[mode].append(run_supervisor(repos[mode], agent, mode == "land"))
            times["bare"].append(bare_merge(repos["worktree"]))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    median = {mode: statistics.median(values) for mode, values in times.items()}
    per_task_land = (median["land"] - median["worktree"]) / args.tasks * 1000
    per_task_bare = median["bare"] / args.tasks * 1000
    report = {
        "tasks": args.tasks,
        "rounds": args.rounds,
        "median_seconds": {mode: round(value, 3) for mode, value in median.items()},
        "landing_ms_per_task": round(per_task_land, 1),
        "bare_merge_verify_ms_per_task": round(per_task_bare, 1),
        "ratio": round(per_task_land / per_task_bare, 2) if per_task_bare else None,
        "src_changed_during_run": source_fingerprint() != fingerprint,
    }
    text = "\n".join([
        f"landing bench: {args.tasks} tasks, {args.rounds} rounds (medians)",
        f"  worktree run            {median['worktree']:.2f} s",
        f"  land run                {median['land']:.2f} s",
        f"  bare merge + verify     {median['bare']:.2f} s",
        f"  landing per task        {per_task_land:.0f} ms",
        f"  bare per task           {per_task_bare:.0f} ms",
        f"  ratio                   {report['ratio']}x",
    ])  # fmt: skip
    emit(text, report, args.json)


if __name__ == "__main__":
    main()
