"""Issue 14's lost edits, counted: a person's saves (in place, temp then rename, stale buffers) raced against workers
that claim, renew, release and complete the same 20 tasks, over N runs; lost lines, stranded tasks, bad files.

The scenario is tests/vault_race_scenario.py (the one tests/test_vault_race.py runs). It works against any
version of src/, so the same command gives the figures before and after a change:

    .venv/bin/python bench/vault_race.py --runs 11
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ForeignLoad, emit, source_fingerprint

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import vault_race_scenario as scenario  # noqa: E402 - lives beside the test that runs it too


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="how many runs (default 11, as in the issue)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of racing per run (default 4)")
    parser.add_argument("--workers", type=int, default=scenario.WORKERS, help="worker processes (default 4)")
    parser.add_argument("--lease", default=scenario.LEASE, help="the lease in .hypervisor.yaml (default 2s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first run (the pacing, not the race)")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder (its path is printed)")
    parser.add_argument("--json", action="store_true", help="the report as JSON on stdout, the table on stderr")
    args = parser.parse_args()

    load = ForeignLoad()
    started = time.monotonic()
    rows, reports = [], []
    with tempfile.TemporaryDirectory(prefix="vault-race-") as scratch:
        for run in range(args.runs):
            folder = Path(scratch) / f"run{run}"
            report = scenario.run_scenario(folder, seed=args.seed + run, run_seconds=args.seconds,
                                           workers=args.workers, lease=args.lease)  # fmt: skip
            if args.keep:
                kept = Path(tempfile.mkdtemp(prefix=f"vault-race-run{run}-"))
                folder.rename(kept / "run")
                report["folder"] = str(kept / "run")
            reports.append(report)
            rows.append(row(run, report))
            print(f"run {run + 1}/{args.runs}: {len(scenario.problems(report))} kinds of problem", file=sys.stderr,
                  flush=True)  # fmt: skip
    totals = summarise(reports)
    totals.update(wall_seconds=round(time.monotonic() - started, 1), foreign_load=round(load.stop(), 2),
                  source=source_fingerprint(), python=sys.version.split()[0], cpus=os.cpu_count())  # fmt: skip
    text = "\n".join([HEADER, *rows, "", *summary_lines(totals, args)])
    emit(text, {"totals": totals, "runs": reports}, args.json)


HEADER = (
    f"{'run':>3}  {'lines':>6}  {'lost':>5}  {'dup':>4}  {'stranded':>8}  {'not done':>8}  {'unparsable':>10}  "
    f"{'unrepaired':>10}  {'stale saves':>11}  {'claims':>6}  {'crashes':>7}"
)


def row(run: int, report: dict) -> str:
    stats = report.get("worker_stats", {})
    return (
        f"{run:>3}  {report.get('lines', 0):>6}  {len(report.get('lost', [])):>5}  "
        f"{len(report.get('duplicated', [])):>4}  {len(report.get('stranded', [])):>8}  "
        f"{len(report.get('not_done', [])):>8}  {len(report.get('unparsable', [])):>10}  "
        f"{len(report.get('touch_unrepaired', [])):>10}  "
        f"{report.get('stale_stats', {}).get('stale_saves', 0):>11}  {stats.get('claims', 0):>6}  "
        f"{len(report.get('crashes', [])):>7}"
    )


def summarise(reports: list[dict]) -> dict:
    def total(key: str) -> int:
        return sum(len(report.get(key, [])) for report in reports)

    def runs_with(key: str) -> int:
        return sum(1 for report in reports if report.get(key))

    lost_by_style: dict[str, int] = {}
    for report in reports:
        for style, count in report.get("lost_by_style", {}).items():
            lost_by_style[style] = lost_by_style.get(style, 0) + count
    return {
        "runs": len(reports),
        "lines": sum(report.get("lines", 0) for report in reports),
        "lost": total("lost"),
        "lost_by_style": lost_by_style,
        "runs_with_losses": runs_with("lost"),
        "duplicated": total("duplicated"),
        "stranded": total("stranded"),
        "touch_checked": sum(report.get("touch_checked", 0) for report in reports),
        "touch_unrepaired": total("touch_unrepaired"),
        "runs_with_stranded": runs_with("stranded"),
        "not_done": total("not_done"),
        "runs_not_drained": sum(1 for report in reports if not report.get("drained")),
        "unparsable": total("unparsable"),
        "validate_failures": sum(1 for report in reports if report.get("validate", {}).get("exit", 0) != 0),
        "crashes": total("crashes"),
        "stale_saves": sum(report.get("stale_stats", {}).get("stale_saves", 0) for report in reports),
        "runs_with_problems": sum(1 for report in reports if scenario.problems(report)),
    }


def summary_lines(totals: dict, args: argparse.Namespace) -> list[str]:
    styles = ", ".join(f"{style} {count}" for style, count in sorted(totals["lost_by_style"].items())) or "none"
    return [
        f"lost lines: {totals['lost']} / {totals['lines']} over {totals['runs']} runs ({styles}); "
        f"runs with losses: {totals['runs_with_losses']} / {totals['runs']}",
        f"duplicated lines: {totals['duplicated']}; unparsable files at the end: {totals['unparsable']} "
        f"(validate failed in {totals['validate_failures']} runs)",
        f"stranded tasks at the end: {totals['stranded']} (in {totals['runs_with_stranded']} runs); "
        f"runs whose drain never finished: {totals['runs_not_drained']} ({totals['not_done']} tasks not done)",
        f"claims a person typed over, not shown by their file after the holder's renew: {totals['touch_unrepaired']} "
        f"/ {totals['touch_checked']}",
        f"stale-buffer saves over a worker's write: {totals['stale_saves']}; crashed processes: {totals['crashes']}",
        f"runs with any problem: {totals['runs_with_problems']} / {totals['runs']}",
        f"{args.workers} workers, {args.seconds:g} s of racing per run, lease {args.lease}; "
        f"{totals['wall_seconds']} s in all; other load {totals['foreign_load']} CPU-s/s; src {totals['source']}, "
        f"Python {totals['python']}, {totals['cpus']} CPUs",
    ]


if __name__ == "__main__":
    main()
