"""Seed-compatible batch worker: `hypervisor triage` over the lines of a batch folder's queue.txt.

Usage (run in the batch folder, or point --dir at it):
  python scripts/batch_worker.py --batch 50            claim and triage up to 50 items
  python scripts/batch_worker.py --stats [--json]      queue_total, claimed, stale, completed, errors,
                                                       dead_letter, remaining
  python scripts/batch_worker.py --dry-run [--json]    what would be claimed, with the triage verdicts; writes nothing
  python scripts/batch_worker.py --reclaim-stale 10m   give back claims taken more than 10 min ago, then exit
                                                       (or go on to the batch when --batch is given too)
  Other options: --dir DIR, --tasks DIR, --rules FILE, --lease 30m, --max-attempts 3, --caller NAME.

The batch folder holds queue.txt (one task-file path or task id a line; blank lines and '#' comments are ignored;
relative paths resolve against the batch folder; a bare id is looked up in the task store at --tasks DIR >
HYPERVISOR_TASKS > 'tasks:' in the .hypervisor.yaml above the batch folder > ./tasks), locks/ and results/ (both
created when missing).

Each task is claimed in its task store exactly as `hypervisor claim` claims it (lease, token, attempts, dead letter
at --max-attempts) and triaged exactly as `hypervisor triage` triages it: a closed task is completed (worker log,
`completed:`), an open one is assigned, linked to its project and released as active without using up an attempt.
The batch folder records it all per queue line, keyed by the whole line: locks/<key>/owner.json while a worker holds
the line's claim, results/<key>.yaml (written uncommitted before the task and the claim are touched, committed
after), results/<key>.error.yaml (failed attempts), results/processed.log. An error releases the claim and counts
the attempt; a line that names no readable task counts its failures in results/ and is dead-lettered there at
--max-attempts. Exit codes: 0 ok (item errors are recorded in results/, they are not fatal), 1 error (no queue file...),
2 usage or settings (a bad option or value, bad rules, a bad .hypervisor.yaml, a missing task root), 3 nothing to claim (this run processed or failed
no item).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

try:
    import hypervisor
except ImportError:  # not installed: use the package next to this script, never one from the cwd
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    import hypervisor  # noqa: F401

from hypervisor.core.config import load_config, resolve_task_root
from hypervisor.core.errors import HypervisorError, UsageError, storage_error
from hypervisor.core.rules import DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS
from hypervisor.core.timeutil import parse_duration
from hypervisor.triage.seedbatch import SeedBatch
from hypervisor.triage.seedqueue import BatchFolder

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOTHING = 0, 1, 2, 3
DEFAULT_BATCH = 50


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="batch_worker.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--batch", type=positive_int, metavar="N",
                   help=f"process up to N items successfully (ok or closed); default {DEFAULT_BATCH}")  # fmt: skip
    p.add_argument("--dir", metavar="DIR", help="the batch folder holding queue.txt (default: the current folder)")
    p.add_argument("--tasks", metavar="DIR", help="hypervisor task root for bare task ids (default: HYPERVISOR_TASKS)")
    p.add_argument("--rules", metavar="FILE", help="triage rules YAML (default: triage_rules: in .hypervisor.yaml, "
                   "else the built-in rules)")  # fmt: skip
    p.add_argument("--lease", metavar="DURATION", help="how long a claim stays valid, e.g. 90s, 30m (default: "
                   f"lease: in .hypervisor.yaml, else {DEFAULT_LEASE_SECONDS // 60}m)")  # fmt: skip
    p.add_argument("--max-attempts", type=positive_int, metavar="N", help="claims of a task before it is dead-"
                   f"lettered (default: max_attempts: in .hypervisor.yaml, else {DEFAULT_MAX_ATTEMPTS})")  # fmt: skip
    p.add_argument("--caller", metavar="NAME", help="worker name in claims and results (default batch-<host>-<pid>)")
    p.add_argument("--stats", action="store_true", help="print queue_total, claimed, completed, errors, remaining")
    p.add_argument("--dry-run", action="store_true", help="show what would be claimed and the verdicts; write nothing")
    p.add_argument("--reclaim-stale", metavar="AGE", help="give back claims taken longer than AGE ago (e.g. 10m)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return p


def emit(args: argparse.Namespace, report: dict, text: str) -> None:
    if args.json:
        print(json.dumps(report, indent=1))
    elif text:
        print(text)


def describe(outcome: dict) -> str:
    status = outcome["status"]
    if status in ("ok", "would_triage"):
        detail = ", ".join(outcome.get("changes") or []) or "no change"
        detail += f" ({outcome.get('kind')}, assignee {outcome.get('assignee')})"
    elif status in ("closed", "would_close"):
        changes = outcome.get("changes")
        detail = f"closed: {outcome.get('close_reason')}" + (f" [{', '.join(changes)}]" if changes else "")
    else:
        detail = outcome.get("error") or ""
    attempt = f"attempt {outcome['attempts']}" if outcome.get("attempts") is not None else "no attempt"
    return f"{status:<18} {outcome['item']}  {attempt}: {detail}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _main(args)
    except UsageError as error:
        print(f"batch_worker.py: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (HypervisorError, OSError) as error:  # OSError: a full, read-only or failing disk, in one line
        problem = storage_error(error) if isinstance(error, OSError) else error
        print(f"batch_worker.py: error: {problem}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(problem), "exit_code": problem.exit_code}))
        return problem.exit_code
    except KeyboardInterrupt:
        print("batch_worker.py: interrupted; the item in hand was released", file=sys.stderr)
        return EXIT_ERROR


def _main(args: argparse.Namespace) -> int:
    if args.stats and (args.batch is not None or args.dry_run):
        raise UsageError("--stats cannot be combined with --batch or --dry-run")
    reclaim_age = parse_duration(args.reclaim_stale, "--reclaim-stale") if args.reclaim_stale else None
    folder = BatchFolder(args.dir or os.getcwd())
    config = load_config(start=folder.dir)
    batch = SeedBatch(folder, config, resolve_task_root(args.tasks, config), caller=args.caller,
                      rules_path=args.rules, lease=parse_duration(args.lease, "--lease") if args.lease else None,
                      max_attempts=args.max_attempts)  # fmt: skip
    items = folder.read_queue()
    batch.check_ids_have_a_root(items)
    reclaim = None
    if reclaim_age is not None:
        if not args.dry_run:
            folder.ensure_dirs()
        reclaim = batch.reclaim_stale(reclaim_age, args.reclaim_stale, args.dry_run)
        if args.batch is None and not args.stats:
            verb = "would reclaim" if args.dry_run else "reclaimed"
            lines = [f"{verb} {reclaim['reclaimed']} stale lock(s)"]
            lines += [f"  {e['key']}  {e['item']}  claimed {e['claimed_at']} by {e['caller']}"
                      for e in reclaim["locks"]]  # fmt: skip
            emit(args, reclaim, "\n".join(lines))
            return EXIT_OK
    if args.stats:
        report = batch.stats(items)
        text = "\n".join(f"{k}: {v}" for k, v in report.items())
        emit(args, report if reclaim is None else dict(report, reclaim=reclaim), text)
        return EXIT_OK
    limit = args.batch or DEFAULT_BATCH
    batch.rules()  # a bad rules file stops the run before anything is claimed
    if args.dry_run:
        report = batch.dry_run(items, limit)
        code = EXIT_OK if report["counts"]["would_claim"] else EXIT_NOTHING
    else:
        folder.ensure_dirs()
        report = batch.run(items, limit)
        code = EXIT_OK if report["claimed"] else EXIT_NOTHING
    if reclaim is not None:
        report["reclaim"] = reclaim
    lines = [describe(outcome) for outcome in report["items"]]
    if code == EXIT_NOTHING and not report.get("error"):
        s = batch.stats(items)
        lines.append(
            f"nothing to claim in {folder.queue_path}: {s['queue_total']} items, {s['completed']} completed, "
            f"{s['dead_letter']} dead-lettered, {s['claimed']} claimed by live workers"
        )
    elif args.dry_run:
        lines.append(f"dry run: would claim {report['counts']['would_claim']} item(s); nothing was written")
    else:
        c = report["counts"]
        lines.append(
            f"{batch.caller}: {report['processed']} processed ({c['ok']} ok, {c['closed']} closed), {c['error']} "
            f"error(s), {c['dead_letter']} dead-lettered, {c['skipped']} skipped, {c['busy']} busy"
        )
    emit(args, report, "\n".join(lines))
    if report.get("error"):  # the batch stopped at a file it could not write: one line, exit 1
        print(f"batch_worker.py: error: {report['error']}", file=sys.stderr)
        return EXIT_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
