"""Claims/s of hypervisor's TaskQueue.claim_next with 1/4/16 processes, beside a re-creation of the seed's mkdir-per-item loop."""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import queue as queue_module
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ForeignLoad, emit, source_fingerprint

SUBFOLDERS = 10


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


# -- hypervisor worker --------------------------------------------------------------------------------------------
def hv_worker(root: str, name: str, ready, go, budget: float, results) -> None:
    """Loop claim_next() until NothingToClaim (or the time budget runs out); report the claimed ids."""
    try:
        from hypervisor.errors import NothingToClaim
        from hypervisor.store import TaskStore
        from hypervisor.taskqueue import TaskQueue

        queue = TaskQueue(TaskStore(root))
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
    except Exception as error:  # reported, not raised: the parent must not hang waiting for this worker
        ready.put(name)
        results.put({"name": name, "ids": [], "times": [], "end": time.monotonic(), "timed_out": False,
                     "error": repr(error)})  # fmt: skip


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
    except Exception as error:
        ready.put(name)
        results.put({"name": name, "ids": [], "times": [], "end": time.monotonic(), "timed_out": False,
                     "error": repr(error)})  # fmt: skip


# -- running one measurement --------------------------------------------------------------------------------------
def run_workers(ctx, target, args_of, procs: int) -> tuple[float, list[dict]]:
    """Start `procs` workers, wait until all are set up, release them together; (elapsed seconds, their reports)."""
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    load = ForeignLoad()
    workers = []
    for n in range(procs):
        name = f"bench-w{n:02d}"
        worker = ctx.Process(target=target, args=(*args_of(name), name, ready, go, ARGS.timeout, results))
        worker.start()
        workers.append(worker)
    _collect(ready, workers, 120)
    start = time.monotonic()
    go.set()
    reports = _collect(results, workers, ARGS.timeout + 600)
    for worker in workers:
        worker.join()
    elapsed = max(report["end"] for report in reports) - start
    foreign = load.stop()
    for report in reports:
        report["start"] = start
        report["foreign_cpu"] = foreign
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
                raise RuntimeError(f"worker(s) died or hung: exit codes {[w.exitcode for w in workers]}")
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
    }


def check_events(root: str, expected: list[str]) -> dict:
    """Count the 'claimed' (and 'taken_over') lines per task in events.jsonl."""
    per_task: collections.Counter = collections.Counter()
    taken_over = 0
    path = os.path.join(root, ".hypervisor", "events.jsonl")
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                event = json.loads(line)
                if event["event"] == "claimed":
                    per_task[event["task"]] += 1
                elif event["event"] == "taken_over":
                    taken_over += 1
    except FileNotFoundError:
        pass
    return {
        "claimed_lines": sum(per_task.values()),
        "tasks_claimed_once": sum(1 for task_id in expected if per_task[task_id] == 1),
        "tasks_claimed_twice_or_more": sum(1 for c in per_task.values() if c > 1),
        "taken_over_lines": taken_over,
    }


def measure_hypervisor(ctx, template: str, workdir: str, procs: int, expected: list[str]) -> dict:
    from hypervisor.store import TaskStore

    root = fresh_copy(template, workdir)
    store = TaskStore(root)  # build the index before the clock starts, as a prior `hypervisor list` would have
    if ARGS.index:
        store.refresh()
        store.save_index()
    elapsed, reports = run_workers(ctx, hv_worker, lambda name: (root,), procs)
    result = {"procs": procs, "seconds": elapsed, **check_ids(reports, expected), "events": check_events(root, expected),
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
    elapsed, reports = run_workers(ctx, seed_worker, lambda name: (queue_file, locks_dir, results_dir), procs)
    result = {"procs": procs, "seconds": elapsed, **check_ids(reports, expected), **window_rates(reports)}
    result["claims_per_s"] = result["claims"] / elapsed if elapsed > 0 else 0.0
    torn = sum(1 for p in items if Path(p).read_text().count("status: in_progress\n") != 1)
    result["files_not_rewritten_once"] = torn
    result["results_files"] = len(os.listdir(results_dir))
    shutil.rmtree(os.path.dirname(root))
    return result


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


def table(report: dict) -> str:
    n = report["tasks"]
    lines = [
        f"claims benchmark: {n} tasks in {SUBFOLDERS} folders, {report['cpus']} CPUs, start method "
        f"{report['start_method']}, index prebuilt: {report['index_prebuilt']}; medians of {report['repeat']} "
        f"hypervisor run(s) and {report['seed_repeat']} seed run(s), each on a fresh copy of the store",
        f"src sha256 {report['src_sha256']}" + ("  WARNING: src/ changed during the run" if report["src_changed_during_run"]
                                                else "") + f"; total runtime {report['total_runtime_s']:.0f} s; "
        f"load average (1 min) at start {report['loadavg_1m_at_start']:.1f}, at end {report['loadavg_1m_at_end']:.1f}",
        "",
        f"{'':>5}  {'---------- hypervisor claim_next ----------':^44}  {'---- seed mkdir loop ----':^24}  "
        f"{'':>8}  {'':>10}",
        f"{'procs':>5}  {'claims/s':>9} {'wall s':>7} {'first10%':>8} {'last10%':>8} {'last/first':>10}  "
        f"{'claims/s':>9} {'wall s':>7} {'range':>9}  {'hv/seed':>8}  {'hv vs hv@1':>10}  {'other cpu':>9}",
    ]
    base = None
    for row in report["rows"]:
        hv, seed = row["hypervisor"], row["seed"]
        base = base or hv["median_claims_per_s"]
        decay = (hv["last_10pct"] / hv["first_10pct"]) if hv["first_10pct"] else None
        spread = f"{min(seed['all_claims_per_s']):.0f}-{max(seed['all_claims_per_s']):.0f}"
        lines.append(
            f"{row['procs']:>5}  {hv['median_claims_per_s']:>9.1f} {hv['seconds']:>7.1f} {rate(hv['first_10pct']):>8} "
            f"{rate(hv['last_10pct']):>8} {('-' if decay is None else f'{decay:.2f}x'):>10}  "
            f"{seed['median_claims_per_s']:>9.1f} {seed['seconds']:>7.2f} {spread:>9}  "
            f"{row['ratio_hv_over_seed']:>8.4f}  {hv['median_claims_per_s'] / base:>9.2f}x  "
            f"{hv['foreign_cpu']:>4.1f}/{seed['foreign_cpu']:<4.1f}"
        )
    lines += ["", "exactly-once checks (ids returned by the workers; events.jsonl 'claimed' lines):"]
    for row in report["rows"]:
        hv, seed, ev = row["hypervisor"], row["seed"], row["hypervisor"]["events"]
        lines.append(
            f"  {row['procs']:>2} procs  hypervisor: {check_text(hv, n)}; events.jsonl: {ev['claimed_lines']} claimed "
            f"lines, {ev['tasks_claimed_once']}/{n} tasks exactly once, {ev['tasks_claimed_twice_or_more']} twice+, "
            f"{ev['taken_over_lines']} taken_over  -> {'OK' if row['hv_exactly_once'] else 'FAIL'}"
        )
        lines.append(
            f"  {row['procs']:>2} procs  seed loop : {check_text(seed, n)}; over all {report['seed_repeat']} runs: "
            f"processed more than once {row['seed_duplicated_all_runs']}, lost {row['seed_lost_all_runs']}, "
            f"files not rewritten exactly once {row['seed_bad_files_all_runs']}"
        )
    lines += [
        "",
        "hv/seed < 1: hypervisor claims slower than the seed loop. The seed loop does no fsync, no atomic replace,",
        "no lease or claim record, no event log and no search for the next ready task, so it is a floor, not a peer.",
        "first10%/last10%: aggregate claims/s over the first and the last tenth of the drain.",
        "other cpu (hv/seed): CPU-seconds per second used by other processes on this machine during the run",
        f"(/proc/stat minus our rusage; {report['cpus']} CPUs in all). Above ~0.5 the figure is disturbed; run again.",
    ]
    if report.get("profile"):
        p = report["profile"]
        lines += ["", f"cProfile of a 1-process drain of {p['tasks']} tasks ({p['seconds']:.1f} s under the profiler), "
                  "by cumulative time:"]  # fmt: skip
        lines += [f"  {r['cumtime_s']:>8.2f}s cum {r['tottime_s']:>7.2f}s self {r['ncalls']:>9} calls  {r['function']}"
                  for r in p["top"]]  # fmt: skip
    return "\n".join(lines)


def profile_drain(template: str, workdir: str) -> dict:
    """cProfile one in-process, single-worker drain of a fresh copy of the store."""
    import cProfile
    import pstats

    from hypervisor.errors import NothingToClaim
    from hypervisor.store import TaskStore
    from hypervisor.taskqueue import TaskQueue

    root = fresh_copy(template, workdir)
    store = TaskStore(root)
    if ARGS.index:
        store.refresh()
        store.save_index()
    queue = TaskQueue(TaskStore(root))
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
    stats = pstats.Stats(profiler)
    rows = [
        {"function": f"{os.path.basename(f)}:{line}({func})", "ncalls": nc, "tottime_s": tt, "cumtime_s": ct}
        for (f, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items()  # type: ignore[attr-defined]
    ]
    rows.sort(key=lambda r: r["cumtime_s"], reverse=True)
    shutil.rmtree(os.path.dirname(root))
    return {"tasks": ARGS.tasks, "seconds": seconds, "top": [r for r in rows if "profiler" not in r["function"]][:22]}


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000, metavar="N", help="tasks in the store (default 2000)")
    parser.add_argument("--procs", default="1,4,16", help="process counts, comma-separated (default 1,4,16)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="hypervisor runs per process count; the median is shown (default 1)")
    parser.add_argument("--seed-repeat", type=int, default=3,
                        help="seed-loop runs per process count (cheap, I/O-noisy); the median is shown (default 3)")
    parser.add_argument("--start-method", choices=("fork", "spawn", "forkserver"), default="fork")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S",
                        help="stop a measurement's workers after S seconds and report it as partial (default 300)")
    parser.add_argument("--no-index", dest="index", action="store_false",
                        help="do not prebuild .hypervisor/index.json before the clock starts")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile a single-process drain (adds about the 1-process time)")
    parser.add_argument("--workdir", help="folder for the generated stores (default: a new temp dir, removed after)")
    parser.add_argument("--json", action="store_true", help="print a JSON object on stdout (the table goes to stderr)")
    ARGS = parser.parse_args()  # fmt: skip
    procs_list = [int(p) for p in ARGS.procs.split(",") if p.strip()]
    ctx = multiprocessing.get_context(ARGS.start_method)
    began = time.monotonic()

    def say(text: str) -> None:
        print(f"[claims {time.monotonic() - began:6.1f}s] {text}", file=sys.stderr, flush=True)

    workdir = tempfile.mkdtemp(prefix="hypervisor-bench-claims-", dir=ARGS.workdir)
    fingerprint = source_fingerprint()
    load_at_start = os.getloadavg()[0]
    try:
        template = os.path.join(workdir, "template")
        expected = generate_store(template, ARGS.tasks)
        rows = []
        for procs in procs_list:  # interleaved: hypervisor then seed at each process count, same run
            hv_runs, seed_runs = [], []
            for i in range(max(ARGS.repeat, ARGS.seed_repeat)):
                if i < ARGS.repeat:
                    say(f"hypervisor, {procs} procs ...")
                    hv_runs.append(measure_hypervisor(ctx, template, workdir, procs, expected))
                    say(f"  {hv_runs[-1]['claims_per_s']:.1f} claims/s in {hv_runs[-1]['seconds']:.1f}s")
                if i < ARGS.seed_repeat:
                    seed_runs.append(measure_seed(ctx, template, workdir, procs, expected))
                    say(f"seed loop, {procs} procs: {seed_runs[-1]['claims_per_s']:.1f} claims/s")
            hv, seed = median_of(hv_runs), median_of(seed_runs)
            rows.append({
                "procs": procs,
                "hypervisor": hv,
                "seed": seed,
                "ratio_hv_over_seed": hv["median_claims_per_s"] / seed["median_claims_per_s"],
                "hv_exactly_once": all(
                    r["unique"] == ARGS.tasks and r["duplicated"] == 0 and not r["errors"]
                    and r["events"]["tasks_claimed_once"] == ARGS.tasks and r["events"]["claimed_lines"] == ARGS.tasks
                    for r in hv_runs
                ),
                "seed_duplicated_all_runs": sum(r["duplicated"] for r in seed_runs),
                "seed_lost_all_runs": sum(r["lost"] for r in seed_runs),
                "seed_bad_files_all_runs": sum(r["files_not_rewritten_once"] for r in seed_runs),
            })  # fmt: skip
        report = {
            "benchmark": "claims",
            "tasks": ARGS.tasks,
            "cpus": os.cpu_count(),
            "start_method": ARGS.start_method,
            "repeat": ARGS.repeat,
            "seed_repeat": ARGS.seed_repeat,
            "index_prebuilt": ARGS.index,
            "python": sys.version.split()[0],
            "src_sha256": fingerprint,
            "loadavg_1m_at_start": load_at_start,
            "src_changed_during_run": source_fingerprint() != fingerprint,
            "rows": rows,
        }
        if ARGS.profile:
            say("profiling a 1-process drain ...")
            report["profile"] = profile_drain(template, workdir)
        say("done")
        report["total_runtime_s"] = time.monotonic() - began
        report["loadavg_1m_at_end"] = os.getloadavg()[0]
        emit(table(report), report, ARGS.json)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
