"""Time from a worker's exit to its replacement starting under `hypervisor run --workers 1`, beside a bare spawn loop.

Each round gets a fresh task root of --tasks ready tasks (status inbox, index prebuilt) in a temp folder. The worker
is a tiny `python3 -S` script: its very first action stamps time.time_ns() (CLOCK_REALTIME); it then completes its
task with TaskQueue.complete (HYPERVISOR_TASK_ID / HYPERVISOR_CLAIM_TOKEN / HYPERVISOR_TASKS from the environment),
stamps again as its very last action and appends both stamps to a file, then exits normally. The gap between one
worker's last stamp and the next worker's first stamp is the exit-to-replacement time; with --tasks N there are N-1
gaps per round. Two ways of starting the same worker, interleaved round by round (who goes first alternates) in one run:
  supervisor  `python -m hypervisor run --workers 1 --agent '<worker cmd>'`: the gap is process exit and teardown,
              the waiter thread's reap and queue post, reading the outcome from the store, run.json, claiming the
              next task, its log file, fork/exec and the worker's interpreter start-up up to its first line
  baseline    a bare Python loop: every task claimed up front (not timed), then subprocess.run of the same worker
              one after another, with the supervisor's spawn settings (env, cwd, stdin /dev/null, stdout to a
              fresh log per task, new session): the gap is process exit + spawn + interpreter start-up only
The target is a supervisor median gap under 100 ms; the ratio and difference to the baseline are what the supervisor
itself adds. --extra M puts M done tasks beside the batch (the store a real project has: every exit re-walks it);
--profile also runs one supervisor round under cProfile and shows its cost per task.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import ForeignLoad, emit, source_fingerprint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(REPO, "src")
SUBFOLDERS = 10
TARGET_MS = 100.0
MODES = ("supervisor", "baseline")

# The worker. Stamping comes first (`time` is built in: no import search); paths are filled in by worker_script().
WORKER = """import time
first = time.time_ns()
import os, sys
sys.path[:0] = [{src!r}, {site!r}]
from hypervisor.tasks.store import TaskStore
from hypervisor.claims.queue import TaskQueue
env = os.environ
TaskQueue(TaskStore(env["HYPERVISOR_TASKS"])).complete(env["HYPERVISOR_TASK_ID"], token=env["HYPERVISOR_CLAIM_TOKEN"],
                                                       summary="bench")
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, ("%d %d %s\\n" % (first, time.time_ns(), env["HYPERVISOR_TASK_ID"])).encode())
"""


def worker_script(workdir: str) -> str:
    import yaml  # the worker runs with -S: it is told where PyYAML lives (after its first stamp)

    path = os.path.join(workdir, "worker.py")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(WORKER.format(src=SRC, site=os.path.dirname(os.path.dirname(os.path.abspath(yaml.__file__)))))
    return path


# -- the store ----------------------------------------------------------------------------------------------------
def task_text(i: int, status: str) -> str:
    return (
        "---\n"
        f"id: task-{i:06d}\n"
        f"title: Task {i} - tidy up component {i % 97}\n"
        f"status: {status}\n"
        f"priority: {i % 5}\n"
        "---\n"
        f"# Task {i}\n\nBody text for task {i}: look at the component, change it, and write down what was done.\n"
    )


def build_project(parent: str, count: int, extra: int = 0) -> tuple[str, str]:
    """(project dir, task root) under a new folder of `parent`: `count` ready tasks (inbox) and `extra` done ones
    (in the store, not in the batch), spread over SUBFOLDERS folders; .hypervisor/index.json prebuilt, as any
    earlier hypervisor command leaves it (else every worker would read the whole store)."""
    from hypervisor.tasks.store import TaskStore

    project = tempfile.mkdtemp(prefix="round-", dir=parent)
    root = os.path.join(project, "tasks")
    for sub in range(SUBFOLDERS):
        os.makedirs(os.path.join(root, f"area-{sub}"))
    for i in range(count + extra):
        with open(os.path.join(root, f"area-{i % SUBFOLDERS}", f"task-{i:06d}.md"), "w", encoding="utf-8") as f:
            f.write(task_text(i, "inbox" if i < count else "done"))
    store = TaskStore(root)
    store.refresh()
    return project, root


# -- the two ways of starting the worker --------------------------------------------------------------------------
def worker_argv(python: str, script: str, stamps: str) -> list[str]:
    return [python, "-S", script, stamps]


def run_supervisor(project: str, root: str, argv: list[str], env: dict, profile_out: str | None = None) -> dict:
    """`hypervisor run --workers 1` over the whole task root; returns its summary (checked: every task done once)."""
    template = " ".join(shlex.quote(arg) for arg in argv)
    prefix = [sys.executable, "-m", "cProfile", "-o", profile_out] if profile_out else [sys.executable]
    cmd = [*prefix, "-m", "hypervisor", "run", "--workers", "1", "--agent", template, "--tasks", root,
           "--timeout", "10m", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=project, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"hypervisor run exited {proc.returncode}: {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout)
    bad = [w for w in summary["workers"] if w["status"] != "done" or w["attempts"] != 1]
    if bad or summary["status"] != "finished":
        raise RuntimeError(f"hypervisor run: status {summary['status']}, not done in one attempt: {bad[:3]}")
    return summary


def run_baseline(project: str, root: str, argv: list[str], env: dict) -> None:
    """Claim every task up front (not timed), then start the worker on each, one after another, with no supervisor."""
    from hypervisor.claims.queue import TaskQueue
    from hypervisor.tasks.store import TaskStore

    queue = TaskQueue(TaskStore(root))
    claims = [queue.claim_next("bench-baseline", task_id=s["id"], lease_seconds=3600) for s in queue.ready()]
    logs = os.path.join(project, "baseline-logs")
    os.makedirs(logs)
    for n, claim in enumerate(claims):
        child_env = dict(env)
        child_env.update({"HYPERVISOR_WORKER": "1", "HYPERVISOR_TASK_ID": claim["id"],
                          "HYPERVISOR_CLAIM_TOKEN": claim["claim_token"], "HYPERVISOR_TASKS": root,
                          "HYPERVISOR_RUN_ID": "baseline", "HYPERVISOR_WORKER_NAME": "bench-baseline"})  # fmt: skip
        with open(os.path.join(logs, f"{claim['id']}.{n}.log"), "ab") as log:
            proc = subprocess.run(argv, cwd=project, env=child_env, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"baseline worker on {claim['id']} exited {proc.returncode}: see {log.name}")
    left = TaskQueue(TaskStore(root)).ready()
    if left:
        raise RuntimeError(f"baseline: {len(left)} tasks still ready after the loop")


def gaps_of(stamps: str, count: int) -> tuple[list[float], list[float]]:
    """(exit-to-next-start gaps, each worker's own first-to-last time), in seconds, from a stamps file."""
    with open(stamps, encoding="ascii") as handle:
        rows = sorted((int(a), int(b), task) for a, b, task in (line.split() for line in handle))
    if len(rows) != count or len({task for _, _, task in rows}) != count:
        raise RuntimeError(f"{stamps}: {len(rows)} stamps for {count} tasks")
    gaps = [(rows[i + 1][0] - rows[i][1]) / 1e9 for i in range(len(rows) - 1)]
    if min(gaps) < 0:
        raise RuntimeError(f"{stamps}: two workers overlapped (gap {min(gaps) * 1000:.1f} ms)")
    return gaps, [(b - a) / 1e9 for a, b, _ in rows]


def one_round(mode: str, parent: str, script: str, env: dict, count: int, extra: int = 0,
              profile_out: str | None = None) -> dict:  # fmt: skip
    project, root = build_project(parent, count, extra)
    stamps = os.path.join(project, "stamps.txt")
    argv = worker_argv(sys.executable, script, stamps)
    start = time.perf_counter()
    if mode == "supervisor":
        run_supervisor(project, root, argv, env, profile_out)
    else:
        run_baseline(project, root, argv, env)
    wall = time.perf_counter() - start
    gaps, inside = gaps_of(stamps, count)
    shutil.rmtree(project)
    return {"mode": mode, "gaps_s": gaps, "inside_s": inside, "wall_s": wall, "median_gap_s": statistics.median(gaps)}


# -- profile ------------------------------------------------------------------------------------------------------
def profile_rows(path: str, count: int, limit: int = 24) -> list[dict]:
    """The supervisor's hypervisor/subprocess/threading functions by cumulative time, per task, from a cProfile dump."""
    import pstats

    stats = pstats.Stats(path)
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore
        where = filename.replace(os.sep, "/")
        builtin = filename == "~" and any(name in func for name in ("fsync", "fork_exec", "scandir", "stat"))
        if not builtin and "/hypervisor/" not in where and "/json/" not in where and \
                not where.endswith(("/subprocess.py", "/threading.py", "/queue.py")):  # fmt: skip
            continue
        if func in ("<module>", "main", "invoke", "run", "__call__") and "/supervisor.py" not in where:
            continue
        label = func if builtin else f"{os.path.basename(filename)}:{line}({func})"
        rows.append(
            {
                "function": label,
                "ncalls": ncalls,
                "cum_ms_per_task": cumtime * 1000 / count,
                "self_ms_per_task": tottime * 1000 / count,
            }
        )
    rows.sort(key=lambda r: r["cum_ms_per_task"], reverse=True)
    return rows[:limit]


# -- output -------------------------------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-9 * len(ordered) // 10) - 1)]  # nearest rank


def table(report: dict) -> str:
    sup, base = report["modes"]["supervisor"], report["modes"]["baseline"]
    lines = [
        f"supervisor benchmark: {report['tasks']} ready tasks per round ({report['tasks'] - 1} gaps) in a store with "
        f"{report['extra']} more (done), "
        f"{report['rounds']} round(s) per mode interleaved after one warm-up each; {report['cpus']} CPUs; "
        f"worker `python -S` ({report['python']})",
        f"src sha256 {report['src_sha256']}" + ("  WARNING: src/ changed during the run"
                                                if report["src_changed_during_run"] else "")
        + f"; total runtime {report['total_runtime_s']:.0f} s; load average (1 min) at start "
        f"{report['loadavg_1m_at_start']:.1f}, at end {report['loadavg_1m_at_end']:.1f}; other cpu "
        f"{report['foreign_cpu']:.2f}",
        "",
        f"{'exit -> next worker start':<26} {'median ms':>9} {'p90 ms':>8} {'min ms':>7} {'max ms':>8}   "
        f"{'round medians ms':<24} {'worker ms':>9} {'wall/task ms':>12}",
    ]  # fmt: skip
    for name in MODES:
        row = report["modes"][name]
        lines.append(
            f"{name:<26} {ms(row['median_s']):>9} {ms(row['p90_s']):>8} {ms(row['min_s']):>7} {ms(row['max_s']):>8}   "
            f"{' '.join(ms(m) for m in row['round_medians_s']):<24} {ms(row['worker_median_s']):>9} "
            f"{ms(row['wall_per_task_s']):>12}"
        )
    verdict = "PASS" if report["target"]["meets"] else "MISS"
    lines += [
        "",
        f"supervisor / baseline (medians): {report['ratio']:.2f}x; supervisor overhead {ms(report['overhead_s'])} ms "
        "per replacement",
        f"target: supervisor median gap under {TARGET_MS:g} ms: {ms(sup['median_s'])} ms -> {verdict}",
        "",
        "gap: one worker's last stamp (after its completion was written) to the next worker's first line. The baseline",
        f"gap ({ms(base['median_s'])} ms) is exit + spawn + `python -S` start-up; the rest is the supervisor's own "
        "work.",
        "worker ms: a worker's first-to-last stamp (its imports and the completion), not part of any gap. wall/task:",
        "a round's wall time over its tasks (the supervisor's includes its own start-up, preflight and summary).",
        f"other cpu: CPU-seconds per second used by other processes meanwhile ({report['cpus']} CPUs); above ~0.5",
        "the figures are disturbed: run again.",
    ]
    if report.get("profile"):
        prof = report["profile"]
        lines += ["", f"cProfile of one supervisor round ({prof['tasks']} tasks; supervisor process only, main thread, "
                  f"wall time; median gap under the profiler {ms(prof['median_gap_s'])} ms), per task:"]  # fmt: skip
        lines += [f"  {r['cum_ms_per_task']:>8.2f} ms cum {r['self_ms_per_task']:>7.2f} ms self {r['ncalls']:>7} calls"
                  f"  {r['function']}" for r in prof["top"]]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tasks", type=int, default=101, metavar="N", help="ready tasks per round, giving N-1 gaps (default 101)"
    )
    parser.add_argument("--rounds", type=int, default=3, metavar="R", help="rounds per mode, interleaved (default 3)")
    parser.add_argument(
        "--extra",
        type=int,
        default=0,
        metavar="M",
        help="done tasks in the store besides the batch: what a bigger store costs (default 0)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 11 tasks, 1 round (overrides the above)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run one supervisor round under cProfile and show where its time goes",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object on stdout (the table goes to stderr)")
    args = parser.parse_args()  # fmt: skip
    if args.quick:
        args.tasks, args.rounds = 11, 1
    if args.tasks < 2 or args.rounds < 1:
        parser.error("--tasks must be at least 2 and --rounds at least 1")
    began = time.monotonic()

    def say(text: str) -> None:
        print(f"[supervisor {time.monotonic() - began:6.1f}s] {text}", file=sys.stderr, flush=True)

    workdir = tempfile.mkdtemp(prefix="hypervisor-bench-supervisor-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERVISOR_", "CLAUDE_", "GEMINI_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(workdir, "pycache")  # bytecode cached, and not written into src/
    os.environ["PYTHONPYCACHEPREFIX"] = env["PYTHONPYCACHEPREFIX"]
    fingerprint = source_fingerprint()
    load_at_start = os.getloadavg()[0]
    try:
        script = worker_script(workdir)
        for mode in MODES:  # warm-up: bytecode compiled into the cache, page cache warm
            one_round(mode, workdir, script, env, 3)
        results: dict[str, list[dict]] = {mode: [] for mode in MODES}
        load = ForeignLoad()
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                results[mode].append(one_round(mode, workdir, script, env, args.tasks, args.extra))
                say(f"round {r + 1}/{args.rounds} {mode}: median gap {ms(results[mode][-1]['median_gap_s'])} ms")
        foreign = load.stop()
        modes = {}
        for mode in MODES:
            gaps = [g for run in results[mode] for g in run["gaps_s"]]
            inside = [t for run in results[mode] for t in run["inside_s"]]
            modes[mode] = {
                "median_s": statistics.median(gaps), "p90_s": p90(gaps), "min_s": min(gaps), "max_s": max(gaps),
                "round_medians_s": [run["median_gap_s"] for run in results[mode]],
                "worker_median_s": statistics.median(inside),
                "wall_per_task_s": statistics.median(run["wall_s"] for run in results[mode]) / args.tasks,
                "gaps_s": gaps,
            }  # fmt: skip
        sup, base = modes["supervisor"]["median_s"], modes["baseline"]["median_s"]
        report = {
            "benchmark": "supervisor",
            "tasks": args.tasks,
            "extra": args.extra,
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "src_sha256": fingerprint,
            "loadavg_1m_at_start": load_at_start,
            "foreign_cpu": foreign,
            "modes": modes,
            "ratio": sup / base,
            "overhead_s": sup - base,
            "target": {"max_ms": TARGET_MS, "supervisor_median_ms": sup * 1000, "meets": sup * 1000 < TARGET_MS},
        }
        if args.profile:
            say("profiling one supervisor round ...")
            out = os.path.join(workdir, "supervisor.prof")
            run = one_round("supervisor", workdir, script, env, args.tasks, args.extra, profile_out=out)
            report["profile"] = {"tasks": args.tasks, "median_gap_s": run["median_gap_s"],
                                 "top": profile_rows(out, args.tasks)}  # fmt: skip
        report["src_changed_during_run"] = source_fingerprint() != fingerprint
        report["total_runtime_s"] = time.monotonic() - began
        report["loadavg_1m_at_end"] = os.getloadavg()[0]
        emit(table(report), report, args.json)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
