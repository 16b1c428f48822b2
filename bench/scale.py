"""Issue 15's goals side by side in one run: index build, claim, list, start-up, the fsync limit and a Backlog.md row.

Every figure is measured on a tmpfs (/dev/shm) and on disk (/tmp), at 1k / 10k / 100k tasks (--sizes), and every
goal is a ratio of two figures taken in the same run, so the load other processes put on the machine hits both:
  index    `hypervisor list --json` as a whole process on a store with no index (every file read): wall and CPU
           seconds; goal under 5 s at 100,000 tasks, with progress on stderr when it takes over a second.
  list     `list --json --status active` as a whole process and in-process (TaskQueue + views.listing + the JSON),
           beside the bare walk (os.scandir + stat of every .md, recursive; the floor: a list must stat the files)
           as a `python -c` process and in-process. Goals: the list's growth from the smallest to the largest size
           within 1.5x the walk's own growth; the list at 10,000 tasks within 2.5x the walk.
  claim    `hypervisor claim --caller C --json` as a whole process and claim_next() in-process (a new TaskQueue
           each), medians, both right after a walk of the tree (untimed: a claim picks from an index walked under
           FRESH_FOR = 10 s ago, and walks first otherwise, as in a queue others use; an unused queue's first claim
           also pays a walk); goal: at the largest size within 1.5x the same at the smallest.
           The rounds take the sizes in turn (alternating the order), so drift hits every size alike.
  startup  bench/startup.py's rounds on a 1,000-task store: `--version`, `--help` and `claim` over
           `python3 -c pass`; goals 1.3x, 1.3x and 2x.
  fsync    the fsync limit of the folder: a loop writing ~300-byte records as the file backend writes a claim
           (temp file, write, fsync, rename, fsync of the folder), records/s, taken before and after; between
           them 16 processes each looping claim_next() in-process on one store (bench/claims.py's workers);
           goal: claims/s at least 0.5x the limit. On a tmpfs fsync costs nothing, so there the limit is the CPU's.
  peers    (on disk, or on the first of --locations) Backlog.md, its own `backlog` binary, installed with npm
           into build/npm-peers/ when missing: `backlog task list --plain` of the same number of tasks (its own
           task files, up to 10,000) beside `hypervisor list --json`; then 8 worker processes claiming through its
           documented flow (`backlog task list --status "To Do" --plain`, then `backlog task edit ID -s "In
           Progress" -a @worker`) on a few tasks, counting how many workers each task was handed to, beside 8
           processes looping `hypervisor claim` over a few hundred (each must be handed out exactly once).
Stores are generated once and cached (benchlib.cached_store) under each location's hypervisor-bench-cache/; the
claims of a run are put back afterwards. Progress goes to stderr. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import startup
from benchlib import ForeignLoad, cached_store, changing_store, emit, run_timed, source_fingerprint, task_path
from claims import check_events, check_ids, file_events, generate_store, hv_worker, open_queue, run_workers
from list import BARE_WALK, SUBFOLDERS, bare_walk, hypervisor_bin
from list import task_text as list_task_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCATIONS = {"tmpfs": "/dev/shm/hypervisor-bench-cache", "disk": "/tmp/hypervisor-bench-cache"}
SECTIONS = ("index", "list", "claim", "startup", "fsync", "peers")
FORMAT = 1  # bump when a generated store's shape changes, so cached stores are made again
INDEX_GOAL_SIZE, INDEX_GOAL_S, PROGRESS_AFTER_S = 100_000, 5.0, 1.0
CLAIM_GROWTH, LIST_GROWTH, LIST_OVER_WALK, LIST_OVER_WALK_SIZE, FSYNC_SHARE = 1.5, 1.5, 2.5, 10_000, 0.5
FSYNC_PROCS, RACE_PROCS = 16, 8
BACKLOG_PACKAGE, BACKLOG_VERSION = "backlog.md", "1.52.0"
BACKLOG_DIR = os.path.join(REPO, "build", "npm-peers")
PEER_MAX_SIZE = 10_000  # Backlog.md reads every task file on each command: 7 s at 10,000 here, so 100,000 is left out
PEER_SLOW_S = 30.0  # a Backlog.md list slower than this skips the larger sizes
BEADS_LINE = ("beads (@beads/bd): not measured. Its npm package has no binary of its own: its postinstall script "
              "downloads the bd binary from outside the package registries, which cannot run here.")  # fmt: skip
RECORD = (json.dumps({"task": "task-000000", "token": "x" * 32, "holder": "bench-worker-00", "attempts": 1,
                      "claimed_at": "2026-12-02T14:00:00.000000Z", "lease_expires_at": "2026-12-02T14:15:00.000000Z",
                      "host": "bench-host", "pid": 12345}) + "\n").ljust(300).encode()  # fmt: skip
ENV = {key: value for key, value in os.environ.items() if not key.startswith("HYPERVISOR_")}
BEGAN = time.monotonic()


def say(text: str) -> None:
    print(f"[scale {time.monotonic() - BEGAN:6.1f}s] {text}", file=sys.stderr, flush=True)


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def fs_type(path: str) -> str:
    """The file system type of the mount holding `path` (/proc/mounts, longest matching mount point)."""
    best, kind = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) > 2 and (path == fields[1] or path.startswith(fields[1].rstrip("/") + "/")):
                if len(fields[1]) > len(best):
                    best, kind = fields[1], fields[2]
    return kind


def checked(run, argv: list[str], allowed: tuple[int, ...] = (0,)):
    if run.returncode not in allowed:
        raise SystemExit(f"scale benchmark: {' '.join(argv)} exited {run.returncode}:\n{run.stderr[-2000:]}")
    return run


def hv(*args: str) -> list[str]:
    return [hypervisor_bin(), *args]


# -- the stores ---------------------------------------------------------------------------------------------------
def scale_store(location: str, size: int) -> tuple[str, str]:
    """(base, task root) of the cached store of `size` tasks at `location`: bench/list.py's shape, a quarter active."""
    base = os.path.join(LOCATIONS[location], f"scale-{size}")
    return base, cached_store(base, size, FORMAT, list_task_text, "scale", SUBFOLDERS)


def put_back(root: str, claimed: list[str]) -> None:
    """Rewrite the claimed tasks as generated and drop the state folder: the cached store as it was made."""
    for task_id in claimed:
        i = int(task_id.rsplit("-", 1)[1])
        with open(os.path.join(root, task_path(i, SUBFOLDERS)), "w", encoding="utf-8") as handle:
            handle.write(list_task_text(i))
    shutil.rmtree(os.path.join(root, ".hypervisor"), ignore_errors=True)


def active_left(size: int, claimed: list[str]) -> int:
    """Active tasks of a store after `claimed` were claimed (list.task_text: every fourth task is active; a claim
    may also take an inbox task)."""
    return (size + 3) // 4 - sum(1 for task_id in claimed if int(task_id.rsplit("-", 1)[1]) % 4 == 0)


# -- index --------------------------------------------------------------------------------------------------------
def measure_index(location: str, sizes: list[int], builds: int, cwd: str) -> list[dict]:
    rows = []
    for size in sizes:
        _, root = scale_store(location, size)
        argv = hv("list", "--json", "--tasks", root)
        runs = []
        for build in range(builds):
            shutil.rmtree(os.path.join(root, ".hypervisor"), ignore_errors=True)
            bare_walk(root)  # the page cache and dentries warm, as for the walk it is compared with
            say(f"{location}: index build of {size:,} tasks ({build + 1}/{builds}) ...")
            load = ForeignLoad()
            start_up = checked(run_timed(hv("--version"), cwd, ENV), ["--version"]).wall
            run = checked(run_timed(argv, cwd, ENV), argv)
            foreign = load.stop()
            listed = len(json.loads(run.stdout))
            runs.append({"wall_s": run.wall, "cpu_s": run.cpu, "listed": listed, "foreign_load": foreign,
                         "version_wall_s": start_up, "progress_due": run.wall - start_up > PROGRESS_AFTER_S,
                         "progress_on_stderr": "hypervisor: indexing" in run.stderr})  # fmt: skip
        chosen = sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]
        row = {"location": location, "size": size, **chosen, "all_wall_s": [r["wall_s"] for r in runs]}
        row["listed_ok"] = all(r["listed"] == size for r in runs)
        row["progress_ok"] = all(r["progress_on_stderr"] for r in runs if r["progress_due"])
        row["goal_met"] = row["wall_s"] < INDEX_GOAL_S if size == INDEX_GOAL_SIZE else None
        rows.append(row)
    return rows


# -- list and claim, warm -----------------------------------------------------------------------------------------
def list_in_process(root: str) -> tuple[float, int]:
    """Seconds of what `list --json --status active` does after its imports: a queue, the listing, the JSON."""
    from hypervisor.claims import views

    start = time.perf_counter()
    queue = open_queue(root, "file")
    items, _invalid = views.listing(queue, ("active",))
    json.dumps(items, indent=2, ensure_ascii=False)
    seconds = time.perf_counter() - start
    queue.store.index.close()
    return seconds, len(items)


def walk_now(root: str) -> None:
    """Bring the index up to date now (a claim walks first when the last walk is FRESH_FOR old or more)."""
    from hypervisor.tasks.store import TaskStore

    store = TaskStore(root)
    store.refresh()
    store.index.close()


def claim_in_process(root: str) -> tuple[float, str]:
    """Seconds of a new TaskQueue's claim_next(), as one claiming process does after its imports; the task id."""
    start = time.perf_counter()
    queue = open_queue(root, "file")
    claim = queue.claim_next("scale-inproc")
    seconds = time.perf_counter() - start
    queue.store.index.close()
    return seconds, claim["id"]


def measure_warm(location: str, sizes: list[int], rounds: int, sections: set[str], cwd: str) -> dict:
    """The list and claim samples of every size, the sizes taking turns within each round."""
    stores = {size: scale_store(location, size) for size in sizes}
    kinds = [k for k, section in (("list_cli", "list"), ("bare_cli", "list"), ("list_inproc", "list"),
                                  ("bare_inproc", "list"), ("claim_cli", "claim"), ("claim_inproc", "claim"))
             if section in sections]  # fmt: skip
    samples = {size: {kind: [] for kind in kinds} for size in sizes}
    cpu = {size: {kind: [] for kind in kinds if kind.endswith("_cli")} for size in sizes}
    claimed: dict[int, list[str]] = {size: [] for size in sizes}
    mismatches: list[str] = []
    with contextlib.ExitStack() as stack:
        for base, _root in stores.values():
            stack.enter_context(changing_store(base))
        try:
            for size, (_base, root) in stores.items():
                say(f"{location}: warming {size:,} tasks (index, page cache) ...")
                checked(run_timed(hv("list", "--json", "--status", "active", "--tasks", root), cwd, ENV), ["list"])
                bare_walk(root)
            load = ForeignLoad()
            for number in range(rounds):
                say(f"{location}: list/claim round {number + 1}/{rounds}")
                for size in sizes if number % 2 == 0 else list(reversed(sizes)):
                    root = stores[size][1]

                    def take(kind: str, seconds: float, cpu_s: float | None = None, size=size) -> None:
                        samples[size][kind].append(seconds)
                        if cpu_s is not None:
                            cpu[size][kind].append(cpu_s)

                    if "list" in sections:
                        argv = hv("list", "--json", "--status", "active", "--tasks", root)
                        run = checked(run_timed(argv, cwd, ENV), argv)
                        take("list_cli", run.wall, run.cpu)
                        expected = active_left(size, claimed[size])
                        if len(json.loads(run.stdout)) != expected:
                            mismatches.append(f"{size}: list showed {len(json.loads(run.stdout))}, not {expected}")
                        argv = [sys.executable, "-c", BARE_WALK, root]
                        run = checked(run_timed(argv, cwd, ENV), argv)
                        take("bare_cli", run.wall, run.cpu)
                        take("list_inproc", list_in_process(root)[0])
                        start = time.perf_counter()
                        walked = bare_walk(root)
                        take("bare_inproc", time.perf_counter() - start)
                        if walked != size:
                            mismatches.append(f"{size}: the bare walk saw {walked} files")
                    if "claim" in sections:
                        walk_now(root)  # both claims pick from an index walked under FRESH_FOR ago, as in a busy queue
                        argv = hv("claim", "--caller", "scale-cli", "--json", "--tasks", root)
                        run = checked(run_timed(argv, cwd, ENV), argv)
                        take("claim_cli", run.wall, run.cpu)
                        claimed[size].append(json.loads(run.stdout)["id"])
                        seconds, task_id = claim_in_process(root)
                        take("claim_inproc", seconds)
                        claimed[size].append(task_id)
            foreign = load.stop()
        finally:
            for size, (_base, root) in stores.items():
                put_back(root, claimed[size])
    medians = {size: {kind: median(values) for kind, values in by_kind.items()} for size, by_kind in samples.items()}
    cpu_medians = {size: {kind: median(values) for kind, values in by_kind.items()} for size, by_kind in cpu.items()}
    return {"location": location, "rounds": rounds, "median_s": medians, "median_cpu_s": cpu_medians,
            "samples_s": samples, "foreign_load": foreign, "mismatches": mismatches,
            "claims_unique": all(len(set(ids)) == len(ids) for ids in claimed.values())}  # fmt: skip


def warm_goals(warm: dict, sizes: list[int]) -> dict:
    """The list and claim ratios of one location's warm figures."""
    m, small, large = warm["median_s"], min(sizes), max(sizes)
    goals: dict = {"small": small, "large": large}
    if large == small:
        return goals
    if "claim_cli" in m[small]:
        for kind in ("claim_cli", "claim_inproc"):
            growth = m[large][kind] / m[small][kind]
            goals[kind] = {"growth": growth, "max": CLAIM_GROWTH, "met": growth <= CLAIM_GROWTH}
    if "list_cli" in m[small]:
        for kind, floor in (("list_cli", "bare_cli"), ("list_inproc", "bare_inproc")):
            growth, floor_growth = m[large][kind] / m[small][kind], m[large][floor] / m[small][floor]
            goals[kind] = {"growth": growth, "walk_growth": floor_growth, "ratio": growth / floor_growth,
                           "max": LIST_GROWTH, "met": growth / floor_growth <= LIST_GROWTH}  # fmt: skip
            if LIST_OVER_WALK_SIZE in m:
                over = m[LIST_OVER_WALK_SIZE][kind] / m[LIST_OVER_WALK_SIZE][floor]
                goals[kind + "_over_walk"] = {"ratio": over, "max": LIST_OVER_WALK, "met": over <= LIST_OVER_WALK}
    return goals


# -- start-up -----------------------------------------------------------------------------------------------------
def measure_startup(location: str, rounds: int, cwd: str) -> dict:
    """bench/startup.py's rounds (its Side, one_round and figures) on a 1,000-task store at `location`."""
    workdir = tempfile.mkdtemp(prefix="startup-", dir=LOCATIONS[location])
    try:
        template = os.path.join(workdir, "template")
        generate_store(template, 1000)
        side = startup.Side("now", sys.executable, template, workdir)
        startup.one_round(side, 0, cwd)  # the index built, bytecode and page cache warm: not counted
        side.samples = {name: [] for name in startup.LABELS}
        load = ForeignLoad()
        for number in range(rounds):
            say(f"{location}: start-up round {number + 1}/{rounds}")
            startup.one_round(side, number, cwd)
        foreign = load.stop()
        found = startup.figures(side.samples)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    goals = {name: {"ratio": found[name]["ratio"], "max": goal, "met": found[name]["ratio"] <= goal}
             for name, goal in startup.GOALS.items()}  # fmt: skip
    return {"location": location, "rounds": rounds, "tasks": 1000, "figures": found, "goals": goals,
            "foreign_load": foreign}  # fmt: skip


# -- the fsync limit and 16 claiming processes --------------------------------------------------------------------
def fsync_loop(folder: str, seconds: float, most: int = 20_000) -> dict:
    """Records/s of durable replaces of claim-sized records into new files of `folder`, for `seconds` (or `most`)."""
    os.makedirs(folder)
    count, start = 0, time.perf_counter()
    while count < most and time.perf_counter() - start < seconds:
        temp = os.path.join(folder, f".record-{count}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, RECORD)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, os.path.join(folder, f"task-{count:06d}.json"))
        folder_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)
        count += 1
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder)
    return {"records": count, "seconds": elapsed, "per_s": count / elapsed}


def measure_fsync(location: str, tasks: int, seconds: float, budget: float) -> dict:
    from hypervisor.tasks.store import TaskStore

    workdir = tempfile.mkdtemp(prefix="fsync-", dir=LOCATIONS[location])
    try:
        say(f"{location}: fsync loop ({seconds:g} s) ...")
        before = fsync_loop(os.path.join(workdir, "records-before"), seconds)
        root = os.path.join(workdir, "tasks")
        expected = generate_store(root, tasks)
        store = TaskStore(root)
        store.refresh()  # as a prior `hypervisor list` would have
        store.index.close()
        say(f"{location}: {FSYNC_PROCS} processes claiming from {tasks:,} tasks (at most {budget:g} s) ...")
        ctx = multiprocessing.get_context("fork")
        elapsed, reports = run_workers(ctx, hv_worker, lambda name: (root, "file"), FSYNC_PROCS, budget)
        found = check_ids(reports, expected)
        events = check_events(file_events(root), expected)
        after = fsync_loop(os.path.join(workdir, "records-after"), seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    limit = (before["per_s"] + after["per_s"]) / 2
    rate = found["claims"] / elapsed if elapsed > 0 else 0.0
    once = (found["duplicated"] == 0 and not found["errors"] and events["claimed_lines"] == found["claims"]
            and events["tasks_claimed_twice_or_more"] == 0)  # fmt: skip
    return {"location": location, "fstype": fs_type(LOCATIONS[location]), "fsync_before": before,
            "fsync_after": after, "fsync_per_s": limit, "procs": FSYNC_PROCS, "tasks": tasks, "seconds": elapsed,
            "claims": found["claims"], "claims_per_s": rate, "share": rate / limit, "max_share": FSYNC_SHARE,
            "met": rate / limit >= FSYNC_SHARE, "exactly_once": once, "timed_out": found["timed_out"],
            "errors": found["errors"], "foreign_load": found["foreign_cpu"]}  # fmt: skip


# -- peers: Backlog.md --------------------------------------------------------------------------------------------
BACKLOG_CONFIG = """project_name: "bench"
default_status: "To Do"
statuses: ["To Do", "In Progress", "Done"]
labels: []
date_format: yyyy-mm-dd
max_column_width: 20
auto_open_browser: false
default_port: 6420
remote_operations: false
auto_commit: false
filesystem_only: true
bypass_git_hooks: false
check_active_branches: false
active_branch_days: 30
task_prefix: "task"
"""  # what `backlog init bench --defaults --no-git --integration-mode none` writes, the browser not opened
BACKLOG_STATUSES = ("To Do", "In Progress", "Done", "Done")


def backlog_task_text(i: int, status: str | None = None) -> str:
    """Task TASK-(i+1) as Backlog.md writes one (`backlog task create`), a description like hypervisor's tasks."""
    return (
        "---\n"
        f"id: TASK-{i + 1}\n"
        f"title: Task {i} - tidy up component {i % 97}\n"
        f"status: {status or BACKLOG_STATUSES[i % len(BACKLOG_STATUSES)]}\n"
        "assignee: []\n"
        f"created_date: '2026-{1 + i % 12:02d}-{1 + i % 28:02d} 10:00'\n"
        f"labels: [bench, area-{i % SUBFOLDERS}]\n"
        "dependencies: []\n"
        f"priority: {('high', 'medium', 'low')[i % 3]}\n"
        f"ordinal: {(i + 1) * 1000}\n"
        "---\n\n## Description\n\n"
        f"Body text for task {i}. Look at the component, decide what to change, change it, and write down\n"
        "what was done and why in the worker log below, so the next person does not have to guess.\n"
    )


def backlog_file(i: int) -> str:
    return os.path.join("backlog", "tasks", f"task-{i + 1} - Task-{i}.md")


def backlog_store(location: str, size: int) -> str:
    """The project folder of a cached Backlog.md project of `size` tasks at `location`."""
    base = os.path.join(LOCATIONS[location], f"backlog-{size}")
    return cached_store(base, size, FORMAT, backlog_task_text, "peers", 1, path_of=backlog_file,
                        extra_files={os.path.join("backlog", "config.yml"): BACKLOG_CONFIG})  # fmt: skip


def backlog_binary() -> tuple[str | None, str]:
    """(path of the `backlog` binary, its version) after installing it with npm if need be; (None, why) if not."""
    exe = os.path.join(BACKLOG_DIR, "node_modules", ".bin", "backlog")
    if not os.path.exists(exe):
        npm = shutil.which("npm")
        if npm is None:
            return None, f"npm is not on PATH, so {BACKLOG_PACKAGE}@{BACKLOG_VERSION} cannot be installed"
        say(f"installing {BACKLOG_PACKAGE}@{BACKLOG_VERSION} into {BACKLOG_DIR} ...")
        done = subprocess.run([npm, "install", "--prefix", BACKLOG_DIR, f"{BACKLOG_PACKAGE}@{BACKLOG_VERSION}"],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0 or not os.path.exists(exe):
            return None, f"npm install {BACKLOG_PACKAGE}@{BACKLOG_VERSION} failed: {done.stderr.strip()[-500:]}"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return exe, version.stdout.strip()


TASK_LINE = re.compile(r"\b(TASK-\d+) - ")


def backlog_worker(project: str, exe: str, name: str, ready, go, budget: float, results) -> None:
    """Backlog.md's documented claim: list the To Do tasks, take the first, set it In Progress and assign yourself;
    until none is left. Reports the ids this worker's edits succeeded on (bench/claims.py's report shape)."""
    ids: list[str] = []
    times: list[float] = []
    errors: list[str] = []
    ready.put(name)
    go.wait()
    deadline, timed_out = time.monotonic() + budget, False
    while True:
        listed = subprocess.run([exe, "task", "list", "--status", "To Do", "--plain"], cwd=project, env=ENV,
                                capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
        found = TASK_LINE.findall(listed.stdout)
        if listed.returncode != 0:
            errors.append(f"task list exited {listed.returncode}: {listed.stderr.strip()[-300:]}")
        if not found or listed.returncode != 0:
            break
        edit = subprocess.run([exe, "task", "edit", found[0], "-s", "In Progress", "-a", f"@{name}", "--plain"],
                              cwd=project, env=ENV, capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
        if edit.returncode == 0:
            ids.append(found[0])
            times.append(time.monotonic())
        else:
            errors.append(f"task edit {found[0]} exited {edit.returncode}: {edit.stderr.strip()[-300:]}")
        if time.monotonic() > deadline:
            timed_out = True
            break
    results.put({"name": name, "ids": ids, "times": times, "end": time.monotonic(), "timed_out": timed_out,
                 "error": "; ".join(errors[:3]) or None})  # fmt: skip


def hv_cli_worker(root: str, cwd: str, name: str, ready, go, budget: float, results) -> None:
    """`hypervisor claim --caller NAME --json` in a loop until it exits 3 (nothing ready)."""
    ids: list[str] = []
    times: list[float] = []
    error = None
    ready.put(name)
    go.wait()
    deadline, timed_out = time.monotonic() + budget, False
    while True:
        done = subprocess.run(hv("claim", "--caller", name, "--json", "--tasks", root), cwd=cwd, env=ENV,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
        if done.returncode == 3:
            break
        if done.returncode != 0:
            error = f"claim exited {done.returncode}: {done.stderr.strip()[-300:]}"
            break
        ids.append(json.loads(done.stdout)["id"])
        times.append(time.monotonic())
        if time.monotonic() > deadline:
            timed_out = True
            break
    results.put({"name": name, "ids": ids, "times": times, "end": time.monotonic(), "timed_out": timed_out,
                 "error": error})  # fmt: skip


def handed_out(reports: list[dict], expected: list[str]) -> dict:
    """Per task, how many workers it was handed to: the tally of those counts, and the checks."""
    counts = collections.Counter(task_id for report in reports for task_id in report["ids"])
    per_task = [counts[task_id] for task_id in expected]
    return {"tasks": len(expected), "handouts": sum(counts.values()),
            "tally": dict(sorted(collections.Counter(per_task).items())),
            "exactly_once": sum(1 for c in per_task if c == 1), "more_than_once": sum(1 for c in per_task if c > 1),
            "most": max(per_task, default=0), "never": sum(1 for c in per_task if c == 0),
            "unexpected": len(set(counts) - set(expected)),
            "errors": [report["error"] for report in reports if report["error"]],
            "timed_out": any(report["timed_out"] for report in reports)}  # fmt: skip


def measure_peers(location: str, sizes: list[int], rounds: int, race: tuple[int, int, int], budget: float,
                  cwd: str, exe: str) -> dict:  # fmt: skip
    listing: list[dict] = []
    slow = None
    for size in sizes:
        if size > PEER_MAX_SIZE or slow is not None:
            why = (f"above {PEER_MAX_SIZE:,} tasks" if size > PEER_MAX_SIZE
                   else f"Backlog.md took {slow:.1f} s at a smaller size")  # fmt: skip
            listing.append({"size": size, "skipped": f"skipped: takes too long ({why})"})
            continue
        project = backlog_store(location, size)
        _, root = scale_store(location, size)
        backlog_argv, hv_argv = [exe, "task", "list", "--plain"], hv("list", "--json", "--tasks", root)
        checked(run_timed(hv_argv, cwd, ENV), hv_argv)  # the index built, not counted
        first = checked(run_timed(backlog_argv, project, ENV), backlog_argv)  # not counted either
        listed = len(TASK_LINE.findall(first.stdout))
        times: dict[str, list[float]] = {"backlog": [], "hypervisor": []}
        count = min(rounds, 3) if first.wall < 5 else 1  # 7 s at 10,000 tasks on an idle machine
        load = ForeignLoad()
        for number in range(count):
            say(f"{location}: Backlog.md and hypervisor listing {size:,} tasks ({number + 1}/{count})")
            times["backlog"].append(checked(run_timed(backlog_argv, project, ENV), backlog_argv).wall)
            run = checked(run_timed(hv_argv, cwd, ENV), hv_argv)
            times["hypervisor"].append(run.wall)
        backlog_s, hv_s = median(times["backlog"]), median(times["hypervisor"])
        listing.append({"size": size, "rounds": count, "backlog_s": backlog_s, "hypervisor_s": hv_s,
                        "ratio": backlog_s / hv_s, "backlog_listed": listed, "hypervisor_listed": len(json.loads(run.stdout)),
                        "foreign_load": load.stop()})  # fmt: skip
        if backlog_s > PEER_SLOW_S:
            slow = backlog_s
    procs, backlog_tasks, hv_tasks = race
    ctx = multiprocessing.get_context("fork")
    workdir = tempfile.mkdtemp(prefix="race-", dir=LOCATIONS[location])
    try:
        project = os.path.join(workdir, "backlog")
        for i in range(backlog_tasks):
            path = os.path.join(project, backlog_file(i))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(backlog_task_text(i, "To Do"))
        with open(os.path.join(project, "backlog", "config.yml"), "w", encoding="utf-8") as handle:
            handle.write(BACKLOG_CONFIG)
        say(f"{location}: {procs} Backlog.md workers claiming {backlog_tasks} tasks (list, then edit) ...")
        elapsed, reports = run_workers(ctx, backlog_worker, lambda name: (project, exe), procs, budget)
        backlog_race = {**handed_out(reports, [f"TASK-{i + 1}" for i in range(backlog_tasks)]), "seconds": elapsed}
        root = os.path.join(workdir, "tasks")
        expected = generate_store(root, hv_tasks)
        say(f"{location}: {procs} processes looping `hypervisor claim` over {hv_tasks} tasks ...")
        elapsed, reports = run_workers(ctx, hv_cli_worker, lambda name: (root, cwd), procs, budget)
        hv_race = {**handed_out(reports, expected), "seconds": elapsed,
                   "events": check_events(file_events(root), expected)}  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # Each task at most once, and every one of them unless the time budget stopped the workers (said beside it).
    hv_race["met"] = (hv_race["more_than_once"] == 0 and not hv_race["errors"] and not hv_race["unexpected"]
                      and hv_race["events"]["tasks_claimed_twice_or_more"] == 0
                      and (hv_race["timed_out"] or hv_race["exactly_once"] == hv_tasks))  # fmt: skip
    return {
        "location": location,
        "listing": listing,
        "race_procs": procs,
        "race_backlog": backlog_race,
        "race_hypervisor": hv_race,
    }


# -- output -------------------------------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def index_lines(rows: list[dict]) -> list[str]:
    lines = ["", "1. index build of a new store: `hypervisor list --json`, whole process, no index (every file read)",
             f"   {'where':<6} {'tasks':>8} {'wall s':>8} {'cpu s':>7} {'cpu/wall':>8}  {'progress on stderr':<20} "
             f"{'listed':>8} {'load':>5}  goal (< {INDEX_GOAL_S:g} s at {INDEX_GOAL_SIZE:,})"]  # fmt: skip
    for r in rows:
        progress = ("yes" if r["progress_on_stderr"] else "no") + (
            f" (due: {verdict(r['progress_ok'])})" if r["progress_due"] else " (not due)"
        )
        goal = "-" if r["goal_met"] is None else f"{r['wall_s']:.2f} s -> {verdict(r['goal_met'])}"
        lines.append(f"   {r['location']:<6} {r['size']:>8,} {r['wall_s']:>8.2f} {r['cpu_s']:>7.2f} "
                     f"{r['cpu_s'] / r['wall_s']:>8.2f}  {progress:<20} {r['listed']:>8,}{'' if r['listed_ok'] else '!'} "
                     f"{r['foreign_load']:>5.2f}  {goal}")  # fmt: skip
    lines.append(
        f"   progress is due when a build took over {PROGRESS_AFTER_S:g} s beyond a `hypervisor --version` "
        "run just before it (the start-up is not the build)"
    )
    return lines


def warm_lines(report: dict, sections: set[str]) -> list[str]:
    lines: list[str] = []
    if "claim" in sections:
        lines += ["", "2. claim at scale: medians (ms); growth = largest size over smallest (goal <= "
                  f"{CLAIM_GROWTH:g}x)",
                  f"   {'where':<6} {'tasks':>8} {'CLI wall':>9} {'CLI cpu':>8} {'in-process':>10}"]  # fmt: skip
        for warm in report["warm"]:
            for size, m in warm["median_s"].items():
                lines.append(f"   {warm['location']:<6} {size:>8,} {ms(m['claim_cli']):>9} "
                             f"{ms(warm['median_cpu_s'][size]['claim_cli']):>8} {ms(m['claim_inproc']):>10}")  # fmt: skip
        for warm in report["warm"]:
            g = warm["goals"]
            for kind, label in (
                ("claim_cli", "`hypervisor claim` whole process"),
                ("claim_inproc", "claim_next in-process"),
            ):
                if kind in g:
                    lines.append(f"   {warm['location']:<6} {label:<34} {g['large']:,}/{g['small']:,}: "
                                 f"{g[kind]['growth']:.2f}x -> {verdict(g[kind]['met'])}")  # fmt: skip
    if "list" in sections:
        lines += ["", "3. list of the active tasks (`list --json --status active`) beside the bare walk (os.scandir + "
                  "stat of every .md): medians (ms)",
                  f"   {'where':<6} {'tasks':>8} {'list CLI':>9} {'walk CLI':>9} {'ratio':>6} | {'list inproc':>11} "
                  f"{'walk inproc':>11} {'ratio':>6}"]  # fmt: skip
        for warm in report["warm"]:
            for size, m in warm["median_s"].items():
                lines.append(f"   {warm['location']:<6} {size:>8,} {ms(m['list_cli']):>9} {ms(m['bare_cli']):>9} "
                             f"{m['list_cli'] / m['bare_cli']:>5.2f}x | {ms(m['list_inproc']):>11} "
                             f"{ms(m['bare_inproc']):>11} {m['list_inproc'] / m['bare_inproc']:>5.2f}x")  # fmt: skip
        for warm in report["warm"]:
            g = warm["goals"]
            for kind, label in (("list_cli", "whole process"), ("list_inproc", "in-process")):
                if kind in g:
                    x = g[kind]
                    lines.append(f"   {warm['location']:<6} growth {g['large']:,}/{g['small']:,}, {label:<13}: list "
                                 f"{x['growth']:.2f}x, walk {x['walk_growth']:.2f}x, list/walk {x['ratio']:.2f}x "
                                 f"(goal <= {LIST_GROWTH:g}x) -> {verdict(x['met'])}")  # fmt: skip
                if kind + "_over_walk" in g:
                    x = g[kind + "_over_walk"]
                    lines.append(f"   {warm['location']:<6} list at {LIST_OVER_WALK_SIZE:,} over the walk, {label:<13}: "
                                 f"{x['ratio']:.2f}x (goal <= {LIST_OVER_WALK:g}x) -> {verdict(x['met'])}")  # fmt: skip
    for warm in report["warm"]:
        problems = warm["mismatches"] + ([] if warm["claims_unique"] else ["a task was claimed twice"])
        lines.append(f"   {warm['location']}: {warm['rounds']} rounds, other processes {warm['foreign_load']:.2f} "
                     f"CPU-s/s; checks: {'; '.join(problems) if problems else 'counts as expected, claims unique'}")  # fmt: skip
    return lines


def startup_lines(rows: list[dict]) -> list[str]:
    lines = ["", "4. start-up on a 1,000-task store (bench/startup.py's rounds), medians over `python3 -c pass`"]
    for row in rows:
        f = row["figures"]
        parts = [f"{startup.LABELS[name]} {f[name]['median_ms']:.1f} ms {f[name]['ratio']:.2f}x "
                 f"(goal {goal['max']:g}x) {verdict(goal['met'])}" for name, goal in row["goals"].items()]  # fmt: skip
        lines.append(f"   {row['location']:<6} python3 -c pass {f['bare']['median_ms']:.1f} ms; " + "; ".join(parts))
        others = ", ".join(
            f"{name} {f[name]['ratio']:.2f}x" for name in ("renew", "show", "release", "complete", "list")
        )
        lines.append(f"   {'':<6} without a goal: {others}; {row['rounds']} rounds, other processes "
                     f"{row['foreign_load']:.2f} CPU-s/s")  # fmt: skip
    return lines


def fsync_lines(rows: list[dict]) -> list[str]:
    lines = ["", f"5. claims/s of {FSYNC_PROCS} processes (claim_next loops, file backend) over the fsync limit "
             "(write + fsync + rename + fsync of the folder, ~300-byte records, same folder type)"]  # fmt: skip
    for r in rows:
        note = "  (tmpfs: fsync costs nothing, the limit is the CPU's)" if r["fstype"] == "tmpfs" else ""
        once = "each task once" if r["exactly_once"] else f"NOT exactly once {r['errors'][:1]}"
        lines.append(f"   {r['location']:<6} {r['fstype']:<6} limit {r['fsync_per_s']:,.0f} records/s "
                     f"({r['fsync_before']['per_s']:,.0f} before, {r['fsync_after']['per_s']:,.0f} after); "
                     f"{r['claims']:,} claims in {r['seconds']:.1f} s = {r['claims_per_s']:,.0f}/s "
                     f"({once}{', stopped at the time budget' if r['timed_out'] else ''}); "
                     f"{r['share']:.3f}x (goal >= {FSYNC_SHARE:g}x) -> {verdict(r['met'])}; other processes "
                     f"{r['foreign_load']:.2f} CPU-s/s{note}")  # fmt: skip
    return lines


def race_text(r: dict) -> str:
    tally = ", ".join(f"{count} task(s) to {workers} worker(s)" for workers, count in r["tally"].items())
    text = (
        f"{r['exactly_once']}/{r['tasks']} handed out exactly once, {r['more_than_once']} to several workers "
        f"(up to {r['most']}), {r['never']} never; {r['handouts']} hand-outs in {r['seconds']:.1f} s [{tally}]"
    )
    if r["errors"]:
        text += f"; errors: {r['errors'][0]}"
    return text + ("; stopped at the time budget" if r["timed_out"] else "")


def peers_lines(report: dict) -> list[str]:
    peers = report["peers"]
    lines = ["", f"6. peers: Backlog.md {peers.get('backlog_version', '?')} (its own `backlog` binary, "
             f"{BACKLOG_DIR}) beside hypervisor"]  # fmt: skip
    if peers.get("not_run"):
        lines.append(f"   Backlog.md: not measured: {peers['not_run']}")
    for row in peers.get("rows", []):
        where = row["location"]
        for entry in row["listing"]:
            if "skipped" in entry:
                lines.append(f"   {where:<6} list {entry['size']:>8,} tasks: {entry['skipped']}")
                continue
            lines.append(f"   {where:<6} list {entry['size']:>8,} tasks: `backlog task list --plain` "
                         f"{entry['backlog_s']:.2f} s ({entry['backlog_listed']:,} listed), `hypervisor list --json` "
                         f"{entry['hypervisor_s']:.2f} s ({entry['hypervisor_listed']:,}): Backlog.md takes "
                         f"{entry['ratio']:.1f}x; {entry['rounds']} round(s), other processes "
                         f"{entry['foreign_load']:.2f} CPU-s/s")  # fmt: skip
        lines.append(
            f"   {where:<6} claim, {row['race_procs']} workers, Backlog.md's list-then-edit: "
            + race_text(row["race_backlog"])
        )
        hv_race = row["race_hypervisor"]
        lines.append(f"   {where:<6} claim, {row['race_procs']} processes, `hypervisor claim`: {race_text(hv_race)}; "
                     f"events.jsonl: {hv_race['events']['tasks_claimed_once']}/{hv_race['tasks']} claimed once "
                     f"-> {verdict(hv_race['met'])}")  # fmt: skip
    lines.append("   " + BEADS_LINE)
    return lines


def table(report: dict) -> str:
    sections = set(report["sections"])
    places = ", ".join(f"{name} = {path} ({fs_type(path)})" for name, path in LOCATIONS.items()
                       if name in report["locations"])  # fmt: skip
    lines = [f"scale benchmark (issue 15): sizes {', '.join(f'{s:,}' for s in report['sizes'])}; {places}; "
             f"{report['cpus']} CPUs; python {report['python']}",
             f"src sha256 {report['src_sha256']}" + ("  WARNING: src/ changed during the run"
                                                     if report["src_changed_during_run"] else "")
             + f"; total runtime {report['total_runtime_s']:.0f} s; load average (1 min) "
             f"{report['loadavg_1m'][0]:.1f} -> {report['loadavg_1m'][1]:.1f}; other processes over the whole run "
             f"{report['foreign_load']:.2f} CPU-s per second (ForeignLoad; above ~0.5 the figures are disturbed)"]  # fmt: skip
    if "index" in sections:
        lines += index_lines(report["index"])
    if sections & {"list", "claim"}:
        lines += warm_lines(report, sections)
    if "startup" in sections:
        lines += startup_lines(report["startup"])
    if "fsync" in sections:
        lines += fsync_lines(report["fsync"])
    if "peers" in sections:
        lines += peers_lines(report)
    lines += ["", "goals: " + ", ".join(f"{name} {verdict(met)}" for name, met in report["verdicts"].items())]
    return "\n".join(lines)


def verdicts(report: dict) -> dict[str, bool]:
    """Every goal of the run by name: met or not."""
    found: dict[str, bool] = {}
    for row in report.get("index", []):
        if row["goal_met"] is not None:
            found[f"index {row['location']}"] = row["goal_met"]
        if row["progress_due"]:
            found[f"index progress {row['location']} {row['size']}"] = row["progress_ok"]
    for warm in report.get("warm", []):
        for kind, goal in warm["goals"].items():
            if isinstance(goal, dict):
                found[f"{kind} {warm['location']}"] = goal["met"]
    for row in report.get("startup", []):
        for name, goal in row["goals"].items():
            found[f"startup {name} {row['location']}"] = goal["met"]
    for row in report.get("fsync", []):
        found[f"fsync share {row['location']}"] = row["met"]
    for row in report.get("peers", {}).get("rows", []):
        found[f"hypervisor exactly once {row['location']}"] = row["race_hypervisor"]["met"]
    return found


# -- the run ------------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))  # fmt: skip
    parser.add_argument("--sizes", help="store sizes, comma-separated (default 1000,10000,100000; --quick 100,1000)")
    parser.add_argument("--rounds", type=int, help="warm rounds per size; medians are shown (default 7, --quick 3)")
    parser.add_argument("--builds", type=int, help="index builds per size; the median is shown (default 2, --quick 1)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections, comma-separated: {','.join(SECTIONS)}")
    parser.add_argument("--locations", default="tmpfs,disk", help="tmpfs (/dev/shm), disk (/tmp); comma-separated")
    parser.add_argument(
        "--tmpfs-dir", default=LOCATIONS["tmpfs"], help="the tmpfs location's folder (default %(default)s)"
    )
    parser.add_argument(
        "--disk-dir", default=LOCATIONS["disk"], help="the disk location's folder (default %(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds, short loops")
    parser.add_argument("--json", action="store_true", help="print a JSON object on stdout (the table goes to stderr)")
    args = parser.parse_args()
    args.sizes = sorted({int(s) for s in (args.sizes or ("100,1000" if args.quick else "1000,10000,100000")).split(",")
                         if s.strip()})  # fmt: skip
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.builds = args.builds or (1 if args.quick else 2)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    args.locations = [s.strip() for s in args.locations.split(",") if s.strip()]
    for value, allowed, option in (
        (args.sections, SECTIONS, "--only"),
        (args.locations, tuple(LOCATIONS), "--locations"),
    ):
        wrong = [v for v in value if v not in allowed]
        if wrong:
            parser.error(f"{option}: {', '.join(wrong)} is not one of {', '.join(allowed)}")
    LOCATIONS.update(tmpfs=os.path.abspath(args.tmpfs_dir), disk=os.path.abspath(args.disk_dir))
    if any(size < 2 for size in args.sizes):
        parser.error("--sizes: every size must be at least 2 tasks")
    # (seconds of each fsync loop, tasks and seconds budget of the 16 processes, race sizes, race time budget)
    args.fsync_seconds, args.fsync_tasks, args.fsync_budget = (0.5, 160, 2.0) if args.quick else (3.0, 3000, 12.0)
    args.race = (4, 2, 30) if args.quick else (RACE_PROCS, 12, 300)  # (workers, Backlog.md tasks, hypervisor tasks)
    args.race_budget = 120.0 if args.quick else 300.0
    return args


def main() -> None:
    args = parse_args()
    sections = set(args.sections)
    fingerprint = source_fingerprint()
    load_at_start = os.getloadavg()[0]
    report: dict = {"benchmark": "scale", "sizes": args.sizes, "rounds": args.rounds, "builds": args.builds,
                    "sections": args.sections, "locations": args.locations, "quick": args.quick,
                    "cpus": os.cpu_count(), "python": sys.version.split()[0], "src_sha256": fingerprint,
                    "bytecode": startup.compile_bytecode(sys.executable),
                    "filesystems": {name: fs_type(LOCATIONS[name]) for name in args.locations}}  # fmt: skip
    cwd = tempfile.mkdtemp(prefix="hypervisor-bench-scale-")  # cwd of the commands: no .hypervisor.yaml
    whole = ForeignLoad()
    try:
        for location in args.locations:
            os.makedirs(LOCATIONS[location], exist_ok=True)
        if "index" in sections:
            report["index"] = [
                row for loc in args.locations for row in measure_index(loc, args.sizes, args.builds, cwd)
            ]
        if sections & {"list", "claim"}:
            report["warm"] = []
            for location in args.locations:
                warm = measure_warm(location, args.sizes, args.rounds, sections, cwd)
                warm["goals"] = warm_goals(warm, args.sizes)
                report["warm"].append(warm)
        if "startup" in sections:
            rounds = max(3, 2 * args.rounds)
            report["startup"] = [measure_startup(location, rounds, cwd) for location in args.locations]
        if "fsync" in sections:
            report["fsync"] = [measure_fsync(location, args.fsync_tasks, args.fsync_seconds, args.fsync_budget)
                               for location in args.locations]  # fmt: skip
        if "peers" in sections:
            exe, version = backlog_binary()
            report["peers"] = {"backlog_version": version} if exe else {"not_run": version}
            if exe:  # on one location: Backlog.md is slow enough that both would double the run
                location = "disk" if "disk" in args.locations else args.locations[0]
                sizes = args.sizes[:1] if args.quick else args.sizes  # --quick: Backlog.md lists the smallest only
                report["peers"]["rows"] = [measure_peers(location, sizes, args.rounds, args.race,
                                                         args.race_budget, cwd, exe)]  # fmt: skip
            report["peers"]["beads"] = BEADS_LINE
        report["verdicts"] = verdicts(report)
        report["foreign_load"] = whole.stop()
        report["src_changed_during_run"] = source_fingerprint() != fingerprint
        report["total_runtime_s"] = time.monotonic() - BEGAN
        report["loadavg_1m"] = [load_at_start, os.getloadavg()[0]]
        say("done")
        emit(table(report), report, args.json)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


if __name__ == "__main__":
    main()
