"""The `hypervisor` commands that run work on the queue: run (the supervisor), status, triage, mcp."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from ..core.timeutil import DURATION_FORMS, parse_duration
from .cli import batch_ids, context_for, emit_json, json_option, print_preflight, tasks_option

if TYPE_CHECKING:
    from ..claims.queue import TaskQueue


@click.command()
@click.option("--ids", multiple=True, metavar="ID", help="Only these tasks (repeatable, or comma-separated).")
@click.option("--batch", "batch_file", type=click.Path(dir_okay=False), help="A file with one task id per line.")
@click.option("--project", metavar="P", help="Only this project.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Triage at most N tasks.")
@click.option("--caller", default="triage", show_default=True, help="Worker name used for the claims.")
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False, exists=True),
              help="Triage rules YAML (default: triage_rules: in .hypervisor.yaml, else the built-in rules).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Show what would change; claim and write nothing.")
@tasks_option
@json_option
def triage(ids, batch_file, project, limit, caller, rules_file, dry_run, tasks, as_json) -> None:
    """Triage ready tasks without a model: close those with a Close Reason, assign the rest, link their project.

    Each task is claimed, triaged and released (inbox becomes active), so triage runs safely beside workers.
    A task whose file cannot be written is given back and reported; a full, read-only or failing disk stops the
    batch there (one line naming the file, exit 1).
    """
    from ..triage.triage import TriageRules, triage_queue

    ctx = context_for(tasks)
    rules = TriageRules.load(rules_file or ctx.config.triage_rules)
    results = triage_queue(ctx.queue, rules, caller=caller, ids=batch_ids(ids, batch_file), project=project,
                           limit=limit, dry_run=dry_run)  # fmt: skip
    if as_json:
        emit_json(results)
    else:
        for item in results["tasks"]:
            click.echo(f"{item['id']}: {item['action']}" + (f" ({item['detail']})" if item.get("detail") else ""))
    if "error" in results:  # a file could not be written: one line, the first such, and exit 1
        more = results["counts"]["errors"] - 1
        click.echo(f"hypervisor: {results['error']}" + (f" (and {more} more: see above)" if more else ""), err=True)
        sys.exit(1)
    if not as_json:
        click.echo("  ".join(f"{k}: {v}" for k, v in results["counts"].items()), err=True)


AGENT_HELP = ("triage (built in, no model), claude (claude -p with the plugin), gemini (gemini -p --yolo with the "
              "extension), or a command such as './work.sh {task_id}' (placeholders: {task_id} {token} {task_file} "
              "{worker} {attempt} {run_id} {workdir}; run without a shell; its program, on PATH or a path from "
              "the current folder, is checked before anything is claimed).")  # fmt: skip


@click.command()
@click.option("--workers", "-w", "worker_count", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Worker processes at once (1 to 32).")  # fmt: skip
@click.option("--agent", default="triage", show_default=True, metavar="AGENT", help=AGENT_HELP)
@click.option("--ids", multiple=True, metavar="ID", help="Only these tasks (repeatable, or comma-separated).")
@click.option("--batch", "batch_file", type=click.Path(dir_okay=False), help="A file with one task id per line.")
@click.option("--project", metavar="P", help="Only this project.")
@click.option("--timeout", default="30m", show_default=True, metavar="DURATION",
              help=f"Kill a worker (its whole process group) that runs longer: {DURATION_FORMS}.")  # fmt: skip
@click.option(
    "--isolation",
    type=click.Choice(["none", "worktree"]),
    default="none",
    show_default=True,
    help="worktree: each task in its own git worktree on branch hypervisor/<task-id>; merged only with --land.",
)
@click.option("--land", is_flag=False, flag_value="", default=None, metavar="[BRANCH]",
              help="With --isolation worktree: verify each completed task, merge what passed into BRANCH (default: the "
                   "branch checked out here) through a queue, verify the merge, fast-forward BRANCH; done once landed.")  # fmt: skip
@click.option("--land-batch", default=1, show_default=True, metavar="N", type=click.IntRange(1, 64),
              help="With --land: test up to N passed branches merged together; bisect when that fails.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Show the preflight, the invalid task files, and the first worker's "
              "command and environment (token redacted); claim and start nothing.")  # fmt: skip
@tasks_option
@json_option
def run(worker_count, agent, ids, batch_file, project, timeout, isolation, land, land_batch, dry_run, tasks,
        as_json) -> None:  # fmt: skip
    """Run a batch: keep N agent workers busy on the queue until the batch is empty.

    \b
    For each ready task of the batch (all tasks, --project, --ids or --batch):
      claim it, start the agent with HYPERVISOR_WORKER=1, HYPERVISOR_TASK_ID and
      HYPERVISOR_CLAIM_TOKEN, renew the lease while it runs, kill it at --timeout,
      then read the outcome from the task file (never from the agent's word).
      A worker that ends without an outcome has its task released and retried,
      up to max_attempts (default 3), then dead-lettered (blocked: max_attempts).

    \b
    Landing (--isolation worktree --land [BRANCH], verify: in .hypervisor.yaml
    or a task's own verify: field, a shell command; exit 0 passes):
      a completed task stays in review; verify runs in its worktree; what
      passes is merged onto BRANCH in a scratch worktree, in pass order, and
      verified again there; BRANCH fast-forwards only when that passes, and
      then the task is done. A failure or merge conflict reopens the task with
      a ## Landing entry (command, exit code, last 40 lines, or the files); its
      retry starts from the new BRANCH. A checkout of BRANCH moves as
      `git merge --ff-only` moves it; where git refuses, landing holds.

    Done, cancelled, claimed and dependency-blocked tasks are reported and
    skipped; a task whose dependencies finish during the run does run.
    Ctrl-C drains (no new tasks; running workers finish); a second Ctrl-C stops
    the workers and releases their tasks. Logs and run.json/summary.json are
    kept in <task root>/.hypervisor/runs/<run-id>/; `hypervisor status` reads them,
    and `hypervisor board` shows the run live in a browser (the run prints its URL).

    A file that cannot be written (a full, read-only or failing disk) stops new
    claims; the running workers finish, and the run ends with its summary and
    one line naming the file.

    \b
    Exit: 0 the batch ran, 1 a task was dead-lettered, lost or (--land) left
          unlanded, or a file could not be written, 2 usage, 3 nothing to
          run, 130 interrupted.

    \b
    Examples:
      hypervisor run --tasks examples/tasks                 # built-in triage
      hypervisor run --agent claude --workers 4 --project web --timeout 20m
      hypervisor run --agent './fix.sh {task_id}' --isolation worktree
      hypervisor run --agent claude --isolation worktree --land --land-batch 4
    """
    from ..supervisor.loop import RunOptions, Supervisor, exit_code
    from ..supervisor.progress import progress_for

    ctx = context_for(tasks)
    options = RunOptions(workers=worker_count, agent=agent, ids=batch_ids(ids, batch_file), project=project,
                         timeout=parse_duration(timeout, "--timeout"), isolation=isolation, land=land,
                         land_batch=land_batch)  # fmt: skip
    if dry_run:
        supervisor = Supervisor(ctx.queue, options)
        supervisor.prepare()
        report = supervisor.preflight()
        supervisor.invalid = supervisor.invalid_files()
        first = supervisor.first_worker(report)
        would_start = min(len(report["ready"]), worker_count)
        if as_json:
            emit_json({**report, "invalid": supervisor.invalid, "first_worker": first, "would_start": would_start,
                       "agent": supervisor.agent.name})  # fmt: skip
        else:
            print_preflight(report)
            if supervisor.invalid:
                click.echo(supervisor.invalid_note())
            if first is not None:
                _print_first_worker(first)
            click.echo(f"would start {would_start} of {worker_count} worker(s) "
                       f"with agent {supervisor.agent.name}; nothing was claimed")  # fmt: skip
        return
    supervisor = Supervisor(ctx.queue, options, progress_for())
    supervisor.prepare()
    report = supervisor.preflight()
    if not report["ready"] and not supervisor.left_to_land():
        emit_json(report) if as_json else print_preflight(report)
        from ..claims.advice import nothing_to_run

        click.echo(f"hypervisor: {nothing_to_run()}", err=True)
        sys.exit(3)
    _point_at_board(ctx.store.state)
    summary = supervisor.run(report)
    if as_json:
        emit_json(summary)
    else:
        _print_summary(summary, supervisor.folder.summary_path)
    if summary.get("error"):  # a file the run could not write: the first one, in one line
        click.echo(f"hypervisor: {summary['error']}", err=True)
    sys.exit(exit_code(summary))


def _print_first_worker(first: dict) -> None:
    import shlex

    click.echo(f"first worker: {first['worker']} on {first['task_id']} (attempt {first['attempt']}), in "
               f"{first['workdir']}")  # fmt: skip
    click.echo(f"  command: {shlex.join(first['argv'])}")
    click.echo("  environment (added to the supervisor's; each claim makes its own token):")
    for name, value in first["env"].items():
        click.echo(f"    {name}={value}")


def _point_at_board(state: str) -> None:
    """Name the board serving this task root, if one runs (on stderr: --json's stdout stays JSON)."""
    from .board.registry import running_board

    url = running_board(state)
    if url:
        click.echo(f"hypervisor: this run is live on the board: {url}", err=True)


def _print_summary(summary: dict, path: str) -> None:
    from ..supervisor.runs import attempts_text, duration_text, run_line

    for entry in summary["workers"]:
        text = entry.get("outcome") or entry.get("reason") or ""
        extra = f" [{entry['branch']} {entry['commit'][:12]}]" if entry.get("branch") and entry.get("commit") else ""
        if entry.get("conflict_files"):
            extra += f" [conflict: {', '.join(entry['conflict_files'])}]"
        click.echo(f"{entry['task_id']}: {entry['status']} ({attempts_text(entry['attempts'], summary.get('max_attempts'))}, "
                   f"{duration_text(entry['duration_s'])}, {entry['tokens']} tokens){extra}: {text}")  # fmt: skip
    skipped = {k: len(v) for k, v in summary["skipped_preflight"].items() if v}
    if skipped:
        click.echo("skipped at preflight: " + ", ".join(f"{k} {v}" for k, v in skipped.items()))
    click.echo(run_line(summary))
    land = summary.get("land")
    if land:
        click.echo(f"land {land['branch']}: {land['from'][:12]} -> {land['to'][:12]}, landed {len(land['landed'])}, "
                   f"reopened {len(land['reopened'])}" + (f"; held: {land['held']}" if land.get("held") else ""))  # fmt: skip
    if os.path.exists(path):
        click.echo(f"summary: {path}")


@click.command()
@click.argument("run_id", metavar="[RUN]", required=False)
@tasks_option
@json_option
def status(run_id, tasks, as_json) -> None:
    """Show a run's state from disk (the latest run unless RUN, or a prefix of it, is given), also while it runs."""
    from ..core.timeutil import humanize, now, parse_iso
    from ..supervisor.runs import attempts_text, counts_text, load_run

    ctx = context_for(tasks)
    view = load_run(ctx.store.state, run_id)
    if as_json:
        emit_json(view)
        return
    elapsed = now() - parse_iso(view["started_at"])
    click.echo(f"run {view['run_id']}: {view['status']} · agent {view['agent']} · {view['workers']} worker(s) · "
               f"started {view['started_at']} ({humanize(elapsed)} ago)")  # fmt: skip
    click.echo("  " + counts_text(view.get("counts", {})))
    limit = view.get("max_attempts")
    for attempt in view.get("running", []):
        age = humanize(now() - parse_iso(attempt["started_at"]))
        of = f" of {limit}" if limit else ""
        phase = ", verifying" if attempt.get("phase") == "verify" else ""
        click.echo(
            f"  running {attempt['worker']} {attempt['task_id']} (attempt {attempt['attempt']}{of}, {age}{phase})"
        )
    for entry in view.get("tasks", []):
        landing = f" (landing: {entry['landing']})" if entry.get("landing") else ""
        if entry["status"] != "running" or landing:
            click.echo(f"  {entry['status']:<12} {entry['task_id']}{landing} ({attempts_text(entry['attempts'], limit)}): "
                       f"{entry.get('outcome') or entry.get('reason')}")  # fmt: skip
    land = view.get("land")
    if land:
        click.echo(f"  land {land['branch']}: {land['from'][:12]} -> {land['to'][:12]}, landed "
                   f"{len(land['landed'])}, reopened {len(land['reopened'])}, queued {len(land.get('queued', []))}"
                   + (f"; held: {land['held']}" if land.get("held") else ""))  # fmt: skip
    if "summary" in view:
        click.echo(f"  summary: {os.path.join(ctx.store.state, 'runs', view['run_id'], 'summary.json')}")


@click.command()
@tasks_option
def mcp(tasks) -> None:
    """Serve the task_manager MCP server on stdio (how Claude Code and Gemini CLI reach the queue)."""
    from .mcp_server import serve

    ctx = context_for(tasks)

    def open_queue() -> TaskQueue:
        """Opened at the first tool call, and again at each until it works: a project may make its task root
        (or fix its .hypervisor.yaml) while the session runs."""
        ctx._config = ctx._queue = None
        ctx.queue.store.ensure_state()
        return ctx.queue

    serve(open_queue)
