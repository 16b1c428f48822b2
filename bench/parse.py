"""Seconds to read 10k/100k task files into index rows: PyYAML only, fastyaml serial and fastyaml in processes."""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

from benchlib import ForeignLoad, cached_store, emit, source_fingerprint

CACHE = "/tmp/hypervisor-bench-cache"
FORMAT = 1  # bump when the generated store's shape changes, so cached stores are regenerated
SUBFOLDERS = 10
GOAL_SIZE, GOAL_SECONDS = 100_000, 5.0
STATUSES = ("active", "inbox", "done", "in_progress", "blocked", "review", "cancelled")
THRESHOLD_SIZES = (250, 500, 750, 1000, 1500, 2000, 4000)


def task_text(i: int) -> str:
    """One task file: the fields hypervisor reads, in the shapes people and hypervisor write them."""
    lines = [f"title: Task {i} - tidy up component {i % 97}" if i % 7 else f"title: 'Task {i}: the quoted kind'",
             f"status: {STATUSES[i % len(STATUSES)]}", f"priority: {i % 5}",
             f"project: {('alpha', 'beta', 'gamma', 'delta')[i % 4]}"]  # fmt: skip
    if i % 3:
        lines.append(f"tags: [bench, area-{i % SUBFOLDERS}]")
    else:
        lines += ["tags:", "- bench", f"- 'area-{i % SUBFOLDERS}'"]
    if i % 4 == 1:
        lines.append(f'depends_on: ["[[task-{i - 1:06d}]]"]')
    elif i % 4 == 2:
        lines += ["depends_on:", f"  - '[[task-{i - 2:06d}]]'", f"  - task-{i - 1:06d}"]
    if i % 5 == 0:
        lines += [f"assignee: worker-{i % 3}", f"attempts: {i % 3}", "modified: 2026-11-22T10:00:00Z"]
    lines.append(f"created: 2026-{1 + i % 12:02d}-{1 + i % 28:02d}")
    return (
        "---\n" + "\n".join(lines) + "\n---\n"
        f"# Task {i}\n\nBody text for task {i}. Look at the component, decide what to change, change it, and write\n"
        "down what was done and why in the worker log below, so the next person does not have to guess.\n"
    )


def store_for(size: int) -> str:
    """The task root of a generated store of `size` tasks, cached under CACHE/parse-<size>/tasks."""
    base = os.path.join(CACHE, f"parse-{size}")
    return cached_store(base, size, FORMAT, task_text, "parse", SUBFOLDERS)


def read(root: str, items: list, mode: str, cpus: int) -> tuple[float, list]:
    """Seconds of read_rows over `items` in `mode` (yaml: fastyaml switched off; parallel: whatever the count
    of files), and the entries."""
    from hypervisor.tasks import bulkread, fastyaml

    fast_load, parallel_min = fastyaml.load, bulkread.PARALLEL_MIN
    if mode == "yaml":
        fastyaml.load = lambda text: None
    bulkread.PARALLEL_MIN = 0
    try:
        start = time.perf_counter()
        entries = bulkread.read_rows(root, items, workers=cpus if mode == "parallel" else 1)
        return time.perf_counter() - start, entries
    finally:
        fastyaml.load, bulkread.PARALLEL_MIN = fast_load, parallel_min


def walk(root: str) -> tuple[float, list]:
    """Seconds of TaskStore._walk with the collector off, as read_rows runs (with it on, the 100k entries of
    the round before make its passes cost as much as the walk), and the items."""
    from hypervisor.tasks.store import TaskStore

    gc.disable()
    try:
        start = time.perf_counter()
        items = list(TaskStore(root)._walk())
        return time.perf_counter() - start, items
    finally:
        gc.enable()


def measure(size: int, rounds: int, cpus: int) -> dict:
    """Median seconds of each mode over `rounds` rounds, the modes taking turns first; checks they agree."""
    root = store_for(size)
    walk(root)  # warm the page cache and dentries, unmeasured
    modes = ("yaml", "serial", "parallel")
    times: dict[str, list[float]] = {mode: [] for mode in ("walk", *modes)}
    load = ForeignLoad()
    reference = None
    for turn in range(rounds):
        seconds, items = walk(root)
        times["walk"].append(seconds)
        for mode in modes[turn % 3 :] + modes[: turn % 3]:
            seconds, entries = read(root, items, mode, cpus)
            times[mode].append(seconds)
            if reference is None:
                reference = entries
            elif entries != reference:
                raise SystemExit(f"parse benchmark: {mode} read {size} files differently from the first mode")
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    return {"size": size, "rounds": rounds, "median_s": medians, "foreign_load": load.stop()}


def threshold(size: int, rounds: int, cpus: int) -> list[dict]:
    """Serial against parallel on the first n files of the store, for the n around bulkread.PARALLEL_MIN."""
    root = store_for(size)
    _, items = walk(root)
    rows = []
    for count in THRESHOLD_SIZES:
        part = items[:count]
        serial, parallel = [], []
        for _ in range(rounds):
            serial.append(read(root, part, "serial", cpus)[0])
            parallel.append(read(root, part, "parallel", cpus)[0])
        rows.append({"files": count, "serial_s": statistics.median(serial), "parallel_s": statistics.median(parallel)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the report as JSON (the table goes to stderr)")
    args = parser.parse_args()
    from hypervisor.tasks import bulkread

    cpus = bulkread.cpus()
    results = [measure(size, args.rounds, cpus) for size in args.sizes]
    small = min(args.sizes)
    steps = threshold(small, max(5, args.rounds), cpus) if cpus > 1 else []
    lines = [f"read_rows, {cpus} CPUs (idle_cpus() now: {bulkread.idle_cpus()}), median of {args.rounds} rounds "
             "(ratios are of the same run; load: CPUs other processes used meanwhile)", "",
             f"{'files':>8} {'walk':>7} {'yaml':>8} {'fast':>8} {'fast xN':>8} {'yaml/fast':>10} "
             f"{'serial/xN':>10} {'yaml/xN':>8} {'load':>5}"]  # fmt: skip
    for row in results:
        m = row["median_s"]
        lines.append(f"{row['size']:>8} {m['walk']:>7.2f} {m['yaml']:>8.2f} {m['serial']:>8.2f} {m['parallel']:>8.2f} "
                     f"{m['yaml'] / m['serial']:>9.2f}x {m['serial'] / m['parallel']:>9.2f}x "
                     f"{m['yaml'] / m['parallel']:>7.2f}x {row['foreign_load']:>5.2f}")  # fmt: skip
    if steps:
        lines += ["", f"first n files of the {small} store: serial / {cpus} processes (>1: processes pay)"]
        lines += [f"{row['files']:>8} {row['serial_s'] * 1000:>7.1f} ms {row['parallel_s'] * 1000:>7.1f} ms "
                  f"{row['serial_s'] / row['parallel_s']:>6.2f}x" for row in steps]  # fmt: skip
    biggest = max(results, key=lambda row: row["size"])
    scale = GOAL_SIZE / biggest["size"]
    m = biggest["median_s"]
    estimate = {mode: (m["walk"] + m[mode]) * scale for mode in ("yaml", "serial", "parallel")}
    lines += ["", f"estimated {GOAL_SIZE:,}-file build (walk + read, from {biggest['size']:,} files; index write not "
              f"included): yaml {estimate['yaml']:.1f} s, fast {estimate['serial']:.1f} s, fast x{cpus} "
              f"{estimate['parallel']:.1f} s; goal {GOAL_SECONDS:.0f} s"]  # fmt: skip
    report = {"benchmark": "parse", "source": source_fingerprint(), "cpus": cpus, "results": results,
              "threshold": steps, "estimate_100k_s": estimate, "parallel_min": bulkread.PARALLEL_MIN}  # fmt: skip
    emit("\n".join(lines), report, args.json)


if __name__ == "__main__":
    main()
