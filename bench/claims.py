"""Claims/s of hypervisor's TaskQueue.claim_next with 1/4/16 processes on the file and Redis backends, beside the seed's mkdir loop."""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import multiprocessing
import os
import queue as queue_module
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ForeignLoad, RedisServer, emit, private_redis, source_fingerprint

SUBFOLDERS = 10
PATHS = (("hypervisor", "hypervisor, file"), ("redis", "hypervisor, redis"), ("seed", "seed mkdir loop"))


# -- the store ----------------------------------------------------------------------------------------------------
def task_text(i: int) -> str:
    """One task file, shaped like the examples: frontmatter with title/status/priority/project/created, a body."""
    return (
        "---\n"
        f"title: Task {i}\n"
        "status: active\n"
        f"priority: {i % 5}\n"
        f"project: {('alpha', 'beta', 'gamma', 'delta')[i % 4]}\n"
        f"created: 2026-{1 + i % 12:02d}-{1 + i % 28:02d}\n"
        "---\n"
        f"# Task {i}\n\nbody text for task {i}: do the thing, then write down what was done.\n"
    )


def generate_store(root: str, count: int) -> list[str]:
    """Write `count` active tasks spread over SUBFOLDERS folders; returns the task ids."""
    ids = []
    for sub in range(SUBFOLDERS):
        os.makedirs(os.path.join(root, f"area-{sub}"), exist_ok=True)
    for i in range(count):
        task_id = f"task-{i:06d}"
        with open(os.path.join(root, f"area-{i % SUBFOLDERS}", task_id + ".md"), "w", encoding="utf-8") as handle:
            handle.write(task_text(i))
        ids.append(task_id)
    return ids


def fresh_copy(template: str, workdir: str) -> str:
    """A fresh copy of the template store under a new folder of `workdir` (not measured)."""
    run_dir = tempfile.mkdtemp(prefix="run-", dir=workdir)
    root = os.path.join(run_dir, "tasks")
    shutil.copytree(template, root)
    return root


# -- the private redis-server -------------------------------------------------------------------------------------
def redis_spec(url: str) -> str:
    """The backend spec of one round: the private server with a namespace of its own, so rounds share no claims."""
    return f"{url}?namespace=bench{secrets.token_hex(6)}"


# -- hypervisor worker --------------------------------------------------------------------------------------------
def hv_worker(root: str, spec: str, name: str, ready, go, budget: float, results) -> None:
    """Loop claim_next() on backend `spec` until NothingToClaim (or the time budget runs out); report the ids."""
    try:
        from hypervisor.core.errors import NothingToClaim

        queue = open_queue(root, spec)
        queue.events_cursor()  # Redis: import redis-py (~0.3 s) and connect before the clock, like the imports above
        ids: list[str] = []
        times: list[float] = []
        ready.put(name)
        go.wait()
        deadline = time.monotonic() + budget
        timed_out = False
        try:
            while True:
                claim = queue.claim_next(name)
                ids.append(claim["id"])
                times.append(time.monotonic())
                if times[-1] > deadline:
                    timed_out = True
                    break
        except NothingToClaim:
            pass
        results.put({"name": name, "ids": ids, "times": times, "end": time.monotonic(), "timed_out": timed_out,
                     "error": None})  # fmt: skip
    except Exception as error:  # noqa: BLE001 - reported, not raised: the parent must not hang waiting for this worker
        ready.put(name)
        results.put({"name": name, "ids": [], "times": [], "end": time.monotonic(), "timed_out": False,
                     "error": repr(error)})  # fmt: skip


def open_queue(root: str, spec: str):
    """A TaskQueue on `root` with its claims on backend `spec` (named here, so HYPERVISOR_BACKEND cannot change it)."""
    from hypervisor.claims.backend import open_claims
    from hypervisor.claims.queue import TaskQueue
    from hypervisor.tasks.store import TaskStore

    store = TaskStore(root)
    return TaskQueue(store, claims=open_claims(spec, store.state))


# -- the disk's floor: fsync'd renames of claim-sized records ------------------------------------------------------
FLOOR_SECONDS = 3.0  # how long each process of the floor's loop runs
FLOOR_GOAL = 0.5  # the goal: file-backend claims/s at least this share of the floor at the same process count


def fsync_worker(folder: str, name: str, ready, go, budget: float, results) -> None:
    """Write + fsync + rename claim-sized records into `folder` for FLOOR_SECONDS: what one durable claim record
    costs the disk at the least (the way fsutil.atomic_write writes one, without its directory fsync)."""
    record = (json.dumps({"task_id": "task-000000", "token": "0" * 32, "caller": name, "claimed_at": 0.0,
                          "lease_seconds": 1800.0, "lease_expires_at": 1800.0, "attempts": 1,
                          "path": "area-0/task-000000.md", "status_before": "active", "assignee_before": None,
                          "worker": None, "previous": None, "scope": []}) + "\n").encode()  # fmt: skip
    ready.put(name)
    go.wait()
    times: list[float] = []
    end = time.monotonic() + FLOOR_SECONDS
    while time.monotonic() < end:
        path = os.path.join(folder, f"{name}-{len(times)}.json")
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, record)
        os.fsync(fd)
        os.close(fd)
        os.replace(path + ".tmp", path)
        times.append(time.monotonic())
    results.put({"name": name, "ids": [f"{name}-{i}" for i in range(len(times))], "times": times,
                 "end": time.monotonic(), "timed_out": False, "error": None})  # fmt: skip


def measure_fsync_floor(ctx, workdir: str, procs: int) -> dict:
    """Records/s of `procs` processes in the fsync'd-rename loop, on the disk the stores are on."""
    folder = tempfile.mkdtemp(prefix="fsync-floor-", dir=workdir)
    elapsed, reports = run_workers(ctx, fsync_worker, lambda name: (folder,), procs)
    shutil.rmtree(folder)
    count = sum(len(report["ids"]) for report in reports)
    return {"procs": procs, "records": count, "seconds": elapsed, "records_per_s": count / elapsed,
            "foreign_cpu": reports[0]["foreign_cpu"]}  # fmt: skip


# -- the seed's loop, re-created ----------------------------------------------------------------------------------
def seed_worker(queue_file: str, locks_dir: str, results_dir: str, name: str, ready, go, budget: float,
                results) -> None:  # fmt: skip
    """Re-creation of the seed's batch_worker.py claim loop, faults included, for comparison only.

    Like the original: every worker reads the whole queue.txt of item paths and walks it in order; an item is
    "claimed" by `(LOCKS_DIR / Path(item).stem).mkdir(exist_ok=False)` (FileExistsError -> skip it); the task file
    is read and rewritten in place with a plain, non-atomic `path.write_text()` (a crash mid-write leaves a torn
    file); a results yaml `RESULTS_DIR/<stem>.yaml` is written the same way; locks are never released (a crashed
    worker's items stay locked forever), nothing is fsynced, there are no leases, and two items with the same
    file stem in different folders share one lock (the second is silently lost).
    """
    try:
        locks = Path(locks_dir)
        results_path = Path(results_dir)
        processed: list[str] = []
        times: list[float] = []
        ready.put(name)
        go.wait()
        deadline = time.monotonic() + budget
        timed_out = False
        for item in Path(queue_file).read_text().splitlines():
            path = Path(item)
            try:
                (locks / path.stem).mkdir(exist_ok=False)
            except FileExistsError:
                continue
            text = path.read_text()
            path.write_text(text.replace("status: active\n", f"status: in_progress\nassignee: {name}\n", 1))
            (results_path / f"{path.stem}.yaml").write_text(f"item: {item}\nworker: {name}\nstatus: claimed\n")
            processed.append(path.stem)
            times.append(time.monotonic())
            if times[-1] > deadline:
                timed_out = True
                break
        results.put({"name": name, "ids": processed, "times": times, "end": time.monotonic(), "timed_out": timed_out,
                     "error": None})  # fmt: skip
    except Exception as error:  # noqa: BLE001 - reported, not raised: the parent must not hang waiting
        ready.put(name)
        results.put({"name": name, "ids": [], "times": [], "end": time.monotonic(), "timed_out": False,
                     "error": repr(error)})  # fmt: skip


# -- running one measurement --------------------------------------------------------------------------------------
def run_workers(
    ctx, target, args_of, procs: int, timeout: float, helpers: tuple[int, ...] = ()
) -> tuple[float, list[dict]]:
    """Start `procs` workers, wait until all are set up, release them together; (elapsed seconds, their reports).

    Each stops after `timeout` seconds (and says so); `helpers`: pids whose CPU is not foreign load (a server)."""
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    load = ForeignLoad(helpers)
    workers = []
    for n in range(procs):
        name = f"bench-w{n:02d}"
        worker = ctx.Process(target=target, args=(*args_of(name), name, ready, go, timeout, results))
        worker.start()
        workers.append(worker)
    _collect(ready, workers, 120)
    start = time.monotonic()
    go.set()
    reports = _collect(results, workers, timeout + 600)
    for worker in workers:
        worker.join()
    elapsed = max(report["end"] for report in reports) - start
    foreign = load.stop()
    for report in reports:
        report["start"] = start
        report["foreign_cpu"] = foreign
        report["server_cpu"] = load.helper_cpu
    return elapsed, reports


def window_rates(reports: list[dict]) -> dict:
    """Claims/s over the first and the last 10% of all claims (shows whether a claim gets dearer as the drain goes)."""
    times = sorted(t for report in reports for t in report["times"])
    if len(times) < 20:
        return {"first_10pct": None, "last_10pct": None}
    start, tenth = reports[0]["start"], len(times) // 10
    first = tenth / (times[tenth - 1] - start)
    last = tenth / (times[-1] - times[-tenth - 1])
    return {"first_10pct": first, "last_10pct": last}


def _collect(channel, workers, timeout: float) -> list:
    """One message per worker from `channel`; fails fast if a worker died without sending one."""
    got, limit = [], time.monotonic() + timeout
    while len(got) < len(workers):
        try:
            got.append(channel.get(timeout=0.2))
        except queue_module.Empty:
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead or time.monotonic() > limit:
                for worker in workers:
                    worker.terminate()
                raise RuntimeError(f"worker(s) died or hung: exit codes {[w.exitcode for w in workers]}") from None
    return got


def check_ids(reports: list[dict], expected: list[str]) -> dict:
    """How many tasks were claimed once, more than once, or not at all, from the ids the workers returned."""
    counts = collections.Counter(task_id for report in reports for task_id in report["ids"])
    return {
        "claims": sum(counts.values()),
        "unique": len(counts),
        "duplicated": sum(1 for c in counts.values() if c > 1),
        "lost": len(set(expected) - set(counts)),
        "unexpected": len(set(counts) - set(expected)),
        "timed_out": any(report["timed_out"] for report in reports),
        "errors": [report["error"] for report in reports if report["error"]],
        "foreign_cpu": reports[0]["foreign_cpu"],
        "server_cpu": reports[0]["server_cpu"],
    }


def file_events(root: str) -> list[dict]:
    """The lines of events.jsonl, read directly rather than through the code under test."""
    try:
        with open(os.path.join(root, ".hypervisor", "events.jsonl"), encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]
    except FileNotFoundError:
        return []


def redis_events(root: str, spec: str) -> list[dict]:
    """The events of a Redis round, from its stream through TaskQueue.events()."""
    queue = open_queue(root, spec)
    try:
        return queue.events()
    finally:
        queue.claims.close()


def check_events(events: list[dict], expected: list[str]) -> dict:
    """Count the 'claimed' (and 'taken_over') events per task."""
    per_task: collections.Counter = collections.Counter()
    taken_over = 0
    for event in events:
        if event["event"] == "claimed":
            per_task[event["task"]] += 1
        elif event["event"] == "taken_over":
            taken_over += 1
    return {
        "claimed_lines": sum(per_task.values()),
        "tasks_claimed_once": sum(1 for task_id in expected if per_task[task_id] == 1),
        "tasks_claimed_twice_or_more": sum(1 for c in per_task.values() if c > 1),
        "taken_over_lines": taken_over,
    }


def prepared_copy(template: str, workdir: str) -> str:
    """A fresh copy of the store, its index built before the clock starts, as a prior `hypervisor list` would have."""
    from hypervisor.tasks.store import TaskStore

    root = fresh_copy(template, workdir)
    if ARGS.index:
        store = TaskStore(root)
        store.refresh()
    return root


def measure_hypervisor(ctx, template: str, workdir: str, procs: int, expected: list[str], backend: str) -> dict:
    """One drain with `procs` workers; `backend` is "file" or the private server's URL (a fresh namespace is added)."""
    root = prepared_copy(template, workdir)
    spec = backend if backend == "file" else redis_spec(backend)
    elapsed, reports = run_workers(ctx, hv_worker, lambda name: (root, spec), procs, ARGS.timeout, HELPER_PIDS)
    events = file_events(root) if spec == "file" else redis_events(root, spec)
    result = {"procs": procs, "backend": "file" if spec == "file" else "redis", "seconds": elapsed,
              **check_ids(reports, expected), "events": check_events(events, expected),
              **window_rates(reports)}  # fmt: skip
    result["claims_per_s"] = result["claims"] / elapsed if elapsed > 0 else 0.0
    shutil.rmtree(os.path.dirname(root))
    return result


def measure_seed(ctx, template: str, workdir: str, procs: int, expected: list[str]) -> dict:
    root = fresh_copy(template, workdir)
    state = os.path.join(os.path.dirname(root), "seed-state")
    locks_dir, results_dir = os.path.join(state, "locks"), os.path.join(state, "results")
    os.makedirs(locks_dir)
    os.makedirs(results_dir)
    queue_file = os.path.join(state, "queue.txt")
    items = sorted(str(p) for p in Path(root).rglob("*.md"))
    Path(queue_file).write_text("\n".join(items) + "\n")
    elapsed, reports = run_workers(
        ctx, seed_worker, lambda name: (queue_file, locks_dir, results_dir), procs, ARGS.timeout, HELPER_PIDS
    )
    result = {"procs": procs, "seconds": elapsed, **check_ids(reports, expected), **window_rates(reports)}
    result["claims_per_s"] = result["claims"] / elapsed if elapsed > 0 else 0.0
    torn = sum(1 for p in items if Path(p).read_text().count("status: in_progress\n") != 1)
    result["files_not_rewritten_once"] = torn
    result["results_files"] = len(os.listdir(results_dir))
    shutil.rmtree(os.path.dirname(root))
    return result


def exactly_once(runs: list[dict]) -> bool:
    """Every run: each task returned to exactly one worker and claimed exactly once in the event log, no errors."""
    return all(
        r["unique"] == ARGS.tasks and r["duplicated"] == 0 and not r["errors"]
        and r["events"]["tasks_claimed_once"] == ARGS.tasks and r["events"]["claimed_lines"] == ARGS.tasks
        for r in runs
    )  # fmt: skip


def median_of(runs: list[dict]) -> dict:
    """The run with the median claims/s (so its checks stay attached), plus every run's figure."""
    ordered = sorted(runs, key=lambda r: r["claims_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["all_claims_per_s"] = [round(r["claims_per_s"], 2) for r in runs]
    chosen["median_claims_per_s"] = statistics.median(r["claims_per_s"] for r in runs)
    return chosen


# -- output -------------------------------------------------------------------------------------------------------
def check_text(result: dict, total: int) -> str:
    text = f"{result['unique']}/{total} claimed, {result['duplicated']} dup, {result['lost']} lost"
    if result["timed_out"]:
        text += " (TIMED OUT: partial run)"
    if result["errors"]:
        text += f" ERRORS: {result['errors'][0]}"
    return text


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# (its claims/s over the seed loop's, over the file backend's) in a row, by claim path
RATIO_KEYS = {"hypervisor": ("ratio_hv_over_seed", None), "redis": ("ratio_redis_over_seed", "ratio_redis_over_file"),
              "seed": (None, None)}  # fmt: skip
EXACTLY_ONCE_KEYS = {"hypervisor": "hv_exactly_once", "redis": "redis_exactly_once"}


def path_line(row: dict, key: str, label: str, base: float) -> str:
    """One claim path at one process count."""
    r = row[key]
    decay = (r["last_10pct"] / r["first_10pct"]) if r["first_10pct"] else None
    runs = r["all_claims_per_s"]
    spread = f"{min(runs):.0f}-{max(runs):.0f}" if len(runs) > 1 else "-"
    over_seed, over_file = (row[k] if k else None for k in RATIO_KEYS[key])
    server = f"{r['server_cpu']:.2f}" if key == "redis" else "-"
    return (
        f"{row['procs']:>5}  {label:<17} {r['median_claims_per_s']:>9.1f} {r['seconds']:>7.2f} "
        f"{rate(r['first_10pct']):>8} {rate(r['last_10pct']):>8} {('-' if decay is None else f'{decay:.2f}x'):>10} "
        f"{spread:>9}  {ratio(over_seed):>8} {ratio(over_file):>8} {r['median_claims_per_s'] / base:>8.2f}x  "
        f"{r['foreign_cpu']:>9.1f} {server:>10}"
    )


def table(report: dict) -> str:
    n, rows = report["tasks"], report["rows"]
    redis = report["redis"]
    paths = [(key, label) for key, label in PATHS if key != "redis" or redis]
    first = rows[0]["procs"] if rows else 1
    lines = [
        f"claims benchmark: {n} tasks in {SUBFOLDERS} folders, {report['cpus']} CPUs, start method "
        f"{report['start_method']}, index prebuilt: {report['index_prebuilt']}; medians of {report['repeat']} "
        f"hypervisor run(s) per backend and {report['seed_repeat']} seed run(s), each on a fresh copy of the store",
        (f"Redis backend: a private redis-server {redis['version']} on 127.0.0.1, persisting nothing, a fresh "
         "namespace per run" if redis else "Redis backend: left out (--no-redis)"),
        f"src sha256 {report['src_sha256']}" + ("  WARNING: src/ changed during the run" if report["src_changed_during_run"]
                                                else "") + f"; total runtime {report['total_runtime_s']:.0f} s; "
        f"load average (1 min) at start {report['loadavg_1m_at_start']:.1f}, at end {report['loadavg_1m_at_end']:.1f}",
        "",
        f"{'procs':>5}  {'claim path':<17} {'claims/s':>9} {'wall s':>7} {'first10%':>8} {'last10%':>8} "
        f"{'last/first':>10} {'range':>9}  {'vs seed':>8} {'vs file':>8} {f'vs @{first}':>9}  "
        f"{'other cpu':>9} {'server cpu':>10}",
    ]  # fmt: skip
    bases = {key: rows[0][key]["median_claims_per_s"] for key, _ in paths} if rows else {}
    for row in rows:
        lines += [path_line(row, key, label, bases[key]) for key, label in paths] + [""]
    lines += [
        f"against the disk's floor (write + fsync + rename loops of claim-sized records, {FLOOR_SECONDS:g} s per "
        f"process, as many processes; goal: the file backend at {FLOOR_GOAL:g}x of it with 16 processes):"
    ]
    for row in rows:
        floor, share = row["fsync_floor"], row["ratio_hv_over_fsync_floor"]
        verdict = ("MEETS" if share >= FLOOR_GOAL else "NOT MET") if row["procs"] == 16 else ""
        lines.append(
            f"  {row['procs']:>2} procs  {floor['records_per_s']:>8.1f} fsync'd renames/s; file backend "
            f"{row['hypervisor']['median_claims_per_s']:>7.1f} claims/s = {share:.3f}x  {verdict}"
        )
    lines += [""]
    lines += ["exactly-once checks (ids the workers returned; 'claimed' events: the lines of events.jsonl for the file "
              "backend, the Redis stream through TaskQueue.events() for Redis):"]  # fmt: skip
    for row in rows:
        for key, label in [(key, label) for key, label in paths if key in EXACTLY_ONCE_KEYS]:
            r, ev = row[key], row[key]["events"]
            log = "events.jsonl" if key == "hypervisor" else "Redis stream"
            lines.append(
                f"  {row['procs']:>2} procs  {label:<17}: {check_text(r, n)}; {log}: {ev['claimed_lines']} claimed, "
                f"{ev['tasks_claimed_once']}/{n} tasks exactly once, {ev['tasks_claimed_twice_or_more']} twice+, "
                f"{ev['taken_over_lines']} taken_over  -> {'OK' if row[EXACTLY_ONCE_KEYS[key]] else 'FAIL'}"
            )
        seed = row["seed"]
        lines.append(
            f"  {row['procs']:>2} procs  {'seed mkdir loop':<17}: {check_text(seed, n)}; over all "
            f"{report['seed_repeat']} runs: processed more than once {row['seed_duplicated_all_runs']}, lost "
            f"{row['seed_lost_all_runs']}, files not rewritten exactly once {row['seed_bad_files_all_runs']}"
        )
    lines += [
        "",
        "vs seed < 1: hypervisor claims slower than the seed loop. The seed loop does no fsync, no atomic replace,",
        "no lease or claim record, no event log and no search for the next ready task, so it is a floor, not a peer.",
        "hypervisor, redis: the same claim_next with the claim record, the lease (a server-side TTL) and the event in",
        "Redis, one Lua script each; the task file is still rewritten atomically, fsync'd, under its flock. The server",
        "is local and persists nothing: a Redis across a network adds a round trip per script, persistence its writes.",
        "first10%/last10%: aggregate claims/s over the first and the last tenth of the drain; range: over the runs.",
        "vs @N: claims/s against the same claim path's at the first process count.",
        "other cpu: CPU-seconds per second used by other processes on this machine during the run (/proc/stat minus our",
        f"rusage and the redis-server's; {report['cpus']} CPUs in all). Above ~0.5 the figure is disturbed; run again.",
        "server cpu: CPU-seconds per second used by the private redis-server during the run.",
    ]
    for p in filter(None, (report.get("profile"), report.get("profile_redis"))):
        lines += ["", f"cProfile of a 1-process drain of {p['tasks']} tasks on the {p['backend']} backend "
                  f"({p['seconds']:.1f} s under the profiler), by cumulative time:"]  # fmt: skip
        lines += [f"  {r['cumtime_s']:>8.2f}s cum {r['tottime_s']:>7.2f}s self {r['ncalls']:>9} calls  {r['function']}"
                  for r in p["top"]]  # fmt: skip
    return "\n".join(lines)


def profile_drain(template: str, workdir: str, backend: str) -> dict:
    """cProfile one in-process, single-worker drain of a fresh copy of the store on `backend`."""
    import cProfile
    import pstats

    from hypervisor.core.errors import NothingToClaim

    root = prepared_copy(template, workdir)
    spec = backend if backend == "file" else redis_spec(backend)
    queue = open_queue(root, spec)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    try:
        while True:
            queue.claim_next("bench-profile")
    except NothingToClaim:
        pass
    profiler.disable()
    seconds = time.perf_counter() - start
    queue.claims.close()
    stats = pstats.Stats(profiler)
    rows = [
        {"function": f"{os.path.basename(f)}:{line}({func})", "ncalls": nc, "tottime_s": tt, "cumtime_s": ct}
        for (f, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items()  # type: ignore[attr-defined]
    ]
    rows.sort(key=lambda r: r["cumtime_s"], reverse=True)
    shutil.rmtree(os.path.dirname(root))
    return {"backend": "file" if spec == "file" else "redis", "tasks": ARGS.tasks, "seconds": seconds,
            "top": [r for r in rows if "profiler" not in r["function"]][:22]}  # fmt: skip


# -- the run ------------------------------------------------------------------------------------------------------
def say(text: str) -> None:
    print(f"[claims {time.monotonic() - BEGAN:6.1f}s] {text}", file=sys.stderr, flush=True)


def measure_row(ctx, template: str, workdir: str, procs: int, expected: list[str], backends: dict) -> dict:
    """Every claim path at one process count, interleaved in the same run: medians, ratios, exactly-once verdicts."""
    labels = dict(PATHS)
    runs: dict[str, list[dict]] = {key: [] for key in (*backends, "seed")}
    for i in range(max(ARGS.repeat, ARGS.seed_repeat)):
        for key, backend in backends.items():
            if i < ARGS.repeat:
                say(f"{labels[key]}, {procs} procs ...")
                runs[key].append(measure_hypervisor(ctx, template, workdir, procs, expected, backend))
                say(f"  {runs[key][-1]['claims_per_s']:.1f} claims/s in {runs[key][-1]['seconds']:.1f}s")
        if i < ARGS.seed_repeat:
            runs["seed"].append(measure_seed(ctx, template, workdir, procs, expected))
            say(f"seed loop, {procs} procs: {runs['seed'][-1]['claims_per_s']:.1f} claims/s")
    say(f"fsync'd renames, {procs} procs ...")
    floor = measure_fsync_floor(ctx, workdir, procs)
    say(f"  {floor['records_per_s']:.1f} records/s")
    hv, seed = median_of(runs["hypervisor"]), median_of(runs["seed"])
    row = {
        "procs": procs,
        "hypervisor": hv,
        "seed": seed,
        "fsync_floor": floor,
        "ratio_hv_over_fsync_floor": hv["median_claims_per_s"] / floor["records_per_s"],
        "ratio_hv_over_seed": hv["median_claims_per_s"] / seed["median_claims_per_s"],
        "hv_exactly_once": exactly_once(runs["hypervisor"]),
        "seed_duplicated_all_runs": sum(r["duplicated"] for r in runs["seed"]),
        "seed_lost_all_runs": sum(r["lost"] for r in runs["seed"]),
        "seed_bad_files_all_runs": sum(r["files_not_rewritten_once"] for r in runs["seed"]),
    }
    if "redis" in runs:
        redis = median_of(runs["redis"])
        row.update(redis=redis, ratio_redis_over_seed=redis["median_claims_per_s"] / seed["median_claims_per_s"],
                   ratio_redis_over_file=redis["median_claims_per_s"] / hv["median_claims_per_s"],
                   redis_exactly_once=exactly_once(runs["redis"]))  # fmt: skip
    return row


def run_benchmark(workdir: str, server: RedisServer | None) -> dict:
    """Generate the store, measure every process count, and return the report."""
    procs_list = [int(p) for p in ARGS.procs.split(",") if p.strip()]
    ctx = multiprocessing.get_context(ARGS.start_method)
    fingerprint = source_fingerprint()
    load_at_start = os.getloadavg()[0]
    template = os.path.join(workdir, "template")
    expected = generate_store(template, ARGS.tasks)
    backends = {"hypervisor": "file", **({"redis": server.url} if server else {})}
    rows = [measure_row(ctx, template, workdir, procs, expected, backends) for procs in procs_list]
    report = {
        "benchmark": "claims",
        "tasks": ARGS.tasks,
        "cpus": os.cpu_count(),
        "start_method": ARGS.start_method,
        "repeat": ARGS.repeat,
        "seed_repeat": ARGS.seed_repeat,
        "index_prebuilt": ARGS.index,
        "python": sys.version.split()[0],
        "redis": {"version": server.version, "url": server.url} if server else None,
        "src_sha256": fingerprint,
        "loadavg_1m_at_start": load_at_start,
        "src_changed_during_run": source_fingerprint() != fingerprint,
        "rows": rows,
    }
    if ARGS.profile:
        for key, backend in backends.items():
            say(f"profiling a 1-process drain on {dict(PATHS)[key]} ...")
            report["profile" if backend == "file" else "profile_redis"] = profile_drain(template, workdir, backend)
    say("done")
    report["total_runtime_s"] = time.monotonic() - BEGAN
    report["loadavg_1m_at_end"] = os.getloadavg()[0]
    return report


def main() -> None:
    global ARGS, HELPER_PIDS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000, metavar="N", help="tasks in the store (default 2000)")
    parser.add_argument("--procs", default="1,4,16", help="process counts, comma-separated (default 1,4,16)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="hypervisor runs per process count and backend; the median is shown (default 1)",
    )
    parser.add_argument(
        "--seed-repeat",
        type=int,
        default=3,
        help="seed-loop runs per process count (cheap, I/O-noisy); the median is shown (default 3)",
    )
    parser.add_argument(
        "--no-redis",
        dest="redis",
        action="store_false",
        help="leave out the Redis backend (by default a private redis-server is started for it)",
    )
    parser.add_argument("--start-method", choices=("fork", "spawn", "forkserver"), default="fork")
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="stop a measurement's workers after S seconds and report it as partial (default 300)",
    )
    parser.add_argument(
        "--no-index",
        dest="index",
        action="store_false",
        help="do not prebuild .hypervisor/index.json before the clock starts",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile a single-process drain per backend (adds about the 1-process times)",
    )
    parser.add_argument("--workdir", help="folder for the generated stores (default: a new temp dir, removed after)")
    parser.add_argument("--json", action="store_true", help="print a JSON object on stdout (the table goes to stderr)")
    ARGS = parser.parse_args()  # fmt: skip
    workdir = tempfile.mkdtemp(prefix="hypervisor-bench-claims-", dir=ARGS.workdir)
    try:
        with (
            private_redis(os.path.join(workdir, "redis"), "claims")
            if ARGS.redis
            else contextlib.nullcontext() as server
        ):
            HELPER_PIDS = (server.pid,) if server else ()
            report = run_benchmark(workdir, server)
        emit(table(report), report, ARGS.json)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


ARGS: argparse.Namespace
HELPER_PIDS: tuple[int, ...] = ()  # servers the benchmark runs (its redis-server): their CPU is not foreign load
BEGAN = time.monotonic()

if __name__ == "__main__":
    main()
