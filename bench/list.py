"""Time of `hypervisor list --status active` on 1k/10k/100k tasks beside a bare os.scandir+stat walk, as subprocess and in-process."""

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

from benchlib import ForeignLoad, cached_store, emit, source_fingerprint

CACHE = "/tmp/hypervisor-bench-cache"
FORMAT = 2  # bump when the generated store's shape changes, so cached stores are regenerated
SUBFOLDERS = 10
TARGET_RATIO = 2.5  # issue 15: list at 10,000 tasks within 2.5x the bare walk
TARGET_SIZE = 10000
OTHER_STATUSES = ("inbox", "done", "done", "blocked", "review", "cancelled", "inbox")

# The bare minimum any tool must do to notice changes: walk the tree, stat every .md (skipping dot entries,
# as hypervisor does). The same source runs as `python -c` and, via exec, in-process.
BARE_WALK = """
import os, sys
def bare_walk(top):
    count = 0
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.name.endswith(".md"):
                    entry.stat(follow_symlinks=False)
                    count += 1
    return count
if __name__ == "__main__":
    bare_walk(sys.argv[1])
"""
_namespace: dict = {"__name__": "bare"}
exec(BARE_WALK, _namespace)  # noqa: S102 - our own constant source
bare_walk = _namespace["bare_walk"]


# -- the stores ---------------------------------------------------------------------------------------------------
def task_text(i: int) -> str:
    status = "active" if i % 4 == 0 else OTHER_STATUSES[(i // 4) % len(OTHER_STATUSES)]
    return (
        "---\n"
        f"title: Task {i} - tidy up component {i % 97}\n"
        f"status: {status}\n"
        f"priority: {i % 5}\n"
        f"project: {('alpha', 'beta', 'gamma', 'delta', 'epsilon')[i % 5]}\n"
        f"tags: [bench, area-{i % SUBFOLDERS}]\n"
        f"created: 2026-{1 + i % 12:02d}-{1 + i % 28:02d}\n"
        "---\n"
        f"# Task {i}\n\n"
        f"Body text for task {i}. Look at the component, decide what to change, change it, and write down\n"
        "what was done and why in the worker log below, so the next person does not have to guess.\n"
    )


def store_for(size: int) -> str:
    """The task root of a generated store of `size` tasks, cached under CACHE/<size>/tasks (made on first use)."""
    base = os.path.join(CACHE, str(size))
    return cached_store(base, size, FORMAT, task_text, "list", SUBFOLDERS)


# -- the measurements ---------------------------------------------------------------------------------------------
def hypervisor_bin() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "hypervisor")
    return beside if os.path.exists(beside) else (shutil.which("hypervisor") or "hypervisor")


def timed_run(cmd: list[str], cwd: str) -> float:
    """Wall seconds of one subprocess (stdout to /dev/null); fails loudly if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return seconds


def hv_in_process(root: str) -> tuple[float, dict, int]:
    """Seconds for the work of `list --status active` in this process: load index, refresh, summaries, sort, filter."""
    from hypervisor.core import rules
    from hypervisor.tasks.store import TaskStore

    start = time.perf_counter()
    store = TaskStore(root)
    getattr(store, "_load_index", lambda: None)()  # private; only splits the phases
    t_index = time.perf_counter()
    store.refresh()
    t_refresh = time.perf_counter()
    items, _invalid = store.summaries(refresh=False)
    items.sort(key=lambda s: rules.queue_order(s["priority"], s["created"], s["id"]))
    active = [s for s in items if s["status"] == "active"]
    t_done = time.perf_counter()
    json.dumps(active, indent=2, ensure_ascii=False)  # what --json prints; reported, not in the total
    t_json = time.perf_counter()
    phases = {
        "load_index": t_index - start,
        "refresh_walk_stat": t_refresh - t_index,
        "summaries_sort_filter": t_done - t_refresh,
        "json_dumps_output": t_json - t_done,
    }
    return t_done - start, phases, len(active)


def bare_in_process(root: str) -> tuple[float, int]:
    start = time.perf_counter()
    count = bare_walk(root)
    return time.perf_counter() - start, count


def warm_interpreter(workdir: str) -> None:
    """Run both commands once on a tiny store, so bytecode caches exist before anything is timed."""
    tiny = os.path.join(workdir, "tiny")
    os.makedirs(tiny)
    with open(os.path.join(tiny, "t-1.md"), "w", encoding="utf-8") as handle:
        handle.write(task_text(0))
    for _ in range(2):
        timed_run([hypervisor_bin(), "list", "--status", "active", "--tasks", tiny, "--json"], workdir)
        timed_run([sys.executable, "-c", BARE_WALK, tiny], workdir)
    shutil.rmtree(tiny)


def measure_size(size: int, reps: int, workdir: str) -> dict:
    root = store_for(size)
    hv = hypervisor_bin()
    hv_cmd = [hv, "list", "--status", "active", "--tasks", root, "--json"]
    bare_cmd = [sys.executable, "-c", BARE_WALK, root]
    startup_cmd = [hv, "--version"]  # imports and click setup, no task work

    shutil.rmtree(os.path.join(root, ".hypervisor"), ignore_errors=True)
    print(f"[list] {size}: cold run (no index) ...", file=sys.stderr, flush=True)
    load = ForeignLoad()
    cold = timed_run(hv_cmd, workdir)
    foreign_cold = load.stop()
    timed_run(bare_cmd, workdir)  # warm the same page cache for the baseline
    timed_run(hv_cmd, workdir)  # first warm run, not counted

    samples: dict[str, list[float]] = {k: [] for k in ("hv_sub", "bare_sub", "startup_sub", "hv_inproc", "bare_inproc")}
    phases: dict[str, list[float]] = {}
    active = files = 0
    load = ForeignLoad()
    for rep in range(reps):  # interleaved, so drift hits all of them alike
        print(f"[list] {size}: rep {rep + 1}/{reps}", file=sys.stderr, flush=True)
        samples["hv_sub"].append(timed_run(hv_cmd, workdir))
        samples["bare_sub"].append(timed_run(bare_cmd, workdir))
        samples["startup_sub"].append(timed_run(startup_cmd, workdir))
        seconds, phase, active = hv_in_process(root)
        samples["hv_inproc"].append(seconds)
        for key, value in phase.items():
            phases.setdefault(key, []).append(value)
        seconds, files = bare_in_process(root)
        samples["bare_inproc"].append(seconds)
    foreign = load.stop()
    med = {key: statistics.median(values) for key, values in samples.items()}
    return {
        "size": size,
        "root": root,
        "reps": reps,
        "cold_hv_sub_s": cold,
        "median_s": med,
        "samples_s": samples,
        "median_phases_s": {key: statistics.median(values) for key, values in phases.items()},
        "ratio_sub": med["hv_sub"] / med["bare_sub"],
        "ratio_inproc": med["hv_inproc"] / med["bare_inproc"],
        "ratio_cold_sub": cold / med["bare_sub"],
        "foreign_cpu_cold": foreign_cold,
        "foreign_cpu_warm": foreign,
        "check": {"md_files_walked": files, "active_listed": active, "active_expected": (size + 3) // 4},
    }


# -- profiling ----------------------------------------------------------------------------------------------------
def profile(size: int, workdir: str, runs: int = 5) -> dict:
    """Where warm `hypervisor list` time goes at `size`: -X importtime (median over runs) and cProfile."""
    root = store_for(size)
    hv = hypervisor_bin()
    args = ["list", "--status", "active", "--tasks", root, "--json"]
    timed_run([hv, *args], workdir)  # make sure the index exists
    per_module: dict[str, list[int]] = {}
    top_level: dict[str, list[int]] = {}
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-X", "importtime", hv, *args], cwd=workdir, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)  # fmt: skip
        for line in proc.stderr.decode().splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, cumulative_us, name = line[len("import time:") :].split("|")
            per_module.setdefault(name.strip(), []).append(int(self_us))
            level = (len(name) - len(name.lstrip()) - 1) // 2  # importtime indents nested imports by 2
            if level <= 1:  # top-level imports and what they import directly
                top_level.setdefault(("  " * level) + name.strip(), []).append(int(cumulative_us))
    imports_total_ms = sum(statistics.median(v) for v in per_module.values()) / 1000
    top_cumulative = sorted(((statistics.median(v) / 1000, k) for k, v in top_level.items()), reverse=True)[:15]
    top_self = sorted(((statistics.median(v) / 1000, k) for k, v in per_module.items()), reverse=True)[:15]

    prof = os.path.join(workdir, "list.prof")
    subprocess.run([sys.executable, "-m", "cProfile", "-o", prof, hv, *args], cwd=workdir, env=ENV,
                   stdout=subprocess.DEVNULL, check=True)  # fmt: skip
    import pstats

    stats = pstats.Stats(prof)
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{os.path.basename(filename)}:{line}({func})", "ncalls": ncalls,
                     "tottime_ms": tottime * 1000, "cumtime_ms": cumtime * 1000})  # fmt: skip
    by_cum = sorted(rows, key=lambda r: r["cumtime_ms"], reverse=True)
    interesting = [
        r for r in by_cum if not r["function"].startswith(("<frozen", "~:0", "<built-in method builtins.exec"))
    ]
    return {
        "size": size,
        "imports_total_ms_median": imports_total_ms,
        "imports_top_cumulative_ms": [{"module": k, "ms": round(ms, 2)} for ms, k in top_cumulative],
        "imports_top_self_ms": [{"module": k, "ms": round(ms, 2)} for ms, k in top_self],
        "cprofile_total_ms": stats.total_tt * 1000,  # type: ignore[attr-defined]
        "cprofile_top_cumulative": interesting[:25],
        "cprofile_top_tottime": sorted(rows, key=lambda r: r["tottime_ms"], reverse=True)[:15],
    }


# -- output -------------------------------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def table(report: dict) -> str:
    lines = [
        f"list benchmark: `hypervisor list --status active --json` vs a bare os.scandir+stat walk "
        f"({report['cpus']} CPUs, median of {report['reps']} interleaved reps, times in ms)",
        f"src sha256 {report['src_sha256']}"
        + ("  WARNING: src/ changed during the run" if report["src_changed_during_run"] else "")
        + f"; total runtime {report['total_runtime_s']:.0f} s; "
        f"load average (1 min) at start {report['loadavg_1m_at_start']:.1f}, at end {report['loadavg_1m_at_end']:.1f}",
        f"subprocess bytecode: {report['subprocess_bytecode']}",
        "",
        f"{'tasks':>7} | {'hv cold':>9} {'hv warm':>9} {'bare':>8} {'hv/bare':>7} {'cold/bare':>9} {'hv startup':>10} "
        f"| {'hv inproc':>9} {'bare inproc':>11} {'hv/bare':>7} | other cpu | check",
        f"{'':>7} | {'--- subprocess (python start included) ---':^67} | {'--- in-process (work only) ---':^31} |",
    ]
    for row in report["sizes"]:
        m, c = row["median_s"], row["check"]
        ok = c["md_files_walked"] == row["size"] and c["active_listed"] == c["active_expected"]
        lines.append(
            f"{row['size']:>7} | {ms(row['cold_hv_sub_s']):>9} {ms(m['hv_sub']):>9} {ms(m['bare_sub']):>8} "
            f"{row['ratio_sub']:>6.2f}x {row['ratio_cold_sub']:>8.1f}x {ms(m['startup_sub']):>10} "
            f"| {ms(m['hv_inproc']):>9} {ms(m['bare_inproc']):>11} {row['ratio_inproc']:>6.2f}x "
            f"| {row['foreign_cpu_cold']:>4.1f}/{row['foreign_cpu_warm']:<4.1f} "
            f"| {c['md_files_walked']} files, {c['active_listed']} active {'OK' if ok else 'MISMATCH'}"
        )
    lines += ["", "in-process phases of hypervisor (median ms): load index.json | refresh (walk+stat+compare) | "
              "summaries+sort+filter | json.dumps of the output (not in total)"]  # fmt: skip
    for row in report["sizes"]:
        p = row["median_phases_s"]
        lines.append(
            f"{row['size']:>7}   {ms(p['load_index']):>9} | {ms(p['refresh_walk_stat']):>9} | "
            f"{ms(p['summaries_sort_filter']):>9} | {ms(p['json_dumps_output']):>9}"
        )
    target = report["target"]
    lines.append("")
    if target["ratio_sub"] is None:
        lines.append(f"target (list on {TARGET_SIZE} tasks within {TARGET_RATIO}x of the bare walk): size not measured")
    else:
        verdict = "MEETS" if target["meets"] else "MISSES"
        lines.append(
            f"target: list on {TARGET_SIZE} tasks within {TARGET_RATIO:g}x of the bare scandir+stat walk "
            f"(subprocess): {target['ratio_sub']:.2f}x -> {verdict} (in-process: {target['ratio_inproc']:.2f}x)"
        )
    lines.append("'hv cold' is the first run with no .hypervisor/ (every file parsed); the OS page cache is warm.")
    lines.append(
        "'hv startup' is `hypervisor --version` (interpreter + imports, no task work). 'other cpu' (cold/warm):"
    )
    lines.append(
        f"CPU-seconds per second used by other processes meanwhile ({report['cpus']} CPUs); above ~0.5 the "
        "figures are disturbed."
    )
    if report.get("profile"):
        p = report["profile"]
        lines += ["", f"profile of warm `hypervisor list` at {p['size']} tasks",
                  f"  imports (python -X importtime, median of runs): {p['imports_total_ms_median']:.1f} ms total; "
                  "largest first-level imports (cumulative ms):"]  # fmt: skip
        lines += [f"    {r['ms']:>7.2f}  {r['module']}" for r in p["imports_top_cumulative_ms"]]
        lines.append("  largest single modules (self ms):")
        lines += [f"    {r['ms']:>7.2f}  {r['module']}" for r in p["imports_top_self_ms"][:10]]
        lines.append(f"  cProfile (whole run {p['cprofile_total_ms']:.0f} ms under the profiler), by cumulative ms:")
        lines += [f"    {r['cumtime_ms']:>8.1f} cum {r['tottime_ms']:>8.1f} self {r['ncalls']:>8} calls  {r['function']}"
                  for r in p["cprofile_top_cumulative"]]  # fmt: skip
        lines.append("  by self ms:")
        lines += [f"    {r['tottime_ms']:>8.1f} self {r['ncalls']:>8} calls  {r['function']}"
                  for r in p["cprofile_top_tottime"]]  # fmt: skip
    return "\n".join(lines)


ENV = {k: v for k, v in os.environ.items() if k != "HYPERVISOR_TASKS"}
PYCACHE = os.path.join(CACHE, "pycache")


def use_bytecode_cache() -> None:
    """Let the subprocesses cache bytecode (under CACHE, not in src/), as an installed package would.

    With PYTHONDONTWRITEBYTECODE set and no __pycache__ in src/, every `hypervisor` run recompiles its modules.
    """
    ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    ENV["PYTHONPYCACHEPREFIX"] = PYCACHE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000", help="store sizes, comma-separated")
    parser.add_argument("--reps", type=int, default=5, help="warm repetitions per size; medians are shown (default 5)")
    parser.add_argument("--profile", type=int, nargs="?", const=TARGET_SIZE, default=None, metavar="SIZE",
                        help=f"also profile warm `hypervisor list` at SIZE tasks (default {TARGET_SIZE})")  # fmt: skip
    parser.add_argument(
        "--no-pyc-cache",
        dest="pyc_cache",
        action="store_false",
        help="run the subprocesses with this environment as is (default: enable bytecode caching, "
        f"with PYTHONPYCACHEPREFIX={PYCACHE}, even if PYTHONDONTWRITEBYTECODE is set)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object on stdout (the table goes to stderr)")
    args = parser.parse_args()  # fmt: skip
    if args.pyc_cache:
        use_bytecode_cache()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    workdir = tempfile.mkdtemp(prefix="hypervisor-bench-list-")  # cwd of the subprocesses: no .hypervisor.yaml
    fingerprint = source_fingerprint()
    load_at_start = os.getloadavg()[0]
    began = time.monotonic()
    try:
        warm_interpreter(workdir)
        rows = [measure_size(size, args.reps, workdir) for size in sizes]
        target_row = next((row for row in rows if row["size"] == TARGET_SIZE), None)
        report = {
            "benchmark": "list",
            "cpus": os.cpu_count(),
            "reps": args.reps,
            "python": sys.version.split()[0],
            "src_sha256": fingerprint,
            "loadavg_1m_at_start": load_at_start,
            "subprocess_bytecode": "cached under " + PYCACHE
            if args.pyc_cache
            else ("not written (PYTHONDONTWRITEBYTECODE)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "default"),
            "sizes": rows,
            "target": {
                "size": TARGET_SIZE,
                "max_ratio": TARGET_RATIO,
                "ratio_sub": target_row["ratio_sub"] if target_row else None,
                "ratio_inproc": target_row["ratio_inproc"] if target_row else None,
                "meets": (target_row["ratio_sub"] <= TARGET_RATIO) if target_row else None,
            },
        }
        if args.profile:
            print(f"[list] profiling at {args.profile} tasks ...", file=sys.stderr, flush=True)
            report["profile"] = profile(args.profile, workdir)
        report["src_changed_during_run"] = source_fingerprint() != fingerprint
        report["total_runtime_s"] = time.monotonic() - began
        report["loadavg_1m_at_end"] = os.getloadavg()[0]
        emit(table(report), report, args.json)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
