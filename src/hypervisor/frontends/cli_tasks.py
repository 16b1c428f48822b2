"""The `hypervisor` commands that read the queue or set it up: list, show, stats, preflight, validate, init."""

from __future__ import annotations

import os
import sys

import click

from ..core.config import command_for, load_config
from . import cli_hot
from .cli import batch_ids, context_for, echo_text, emit_json, json_option, print_preflight, tasks_option


def _warn_invalid(ctx, invalid: list[dict]) -> None:
    if invalid:
        step = command_for("validate", ctx.store.root, ctx.config)
        click.echo(f"hypervisor: {len(invalid)} task file(s) are invalid and were left out; `{step}` lists them",
                   err=True)  # fmt: skip


@click.command("list")
@click.option("--status", "statuses", multiple=True, metavar="S", help="Only this status (repeatable).")
@click.option("--project", metavar="P", help="Only this project.")
@click.option("--assignee", metavar="A", help="Only this assignee.")
@click.option("--ready", is_flag=True, help="Only claimable tasks, in queue order.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N tasks.")
@tasks_option
@json_option
def list_cmd(statuses, project, assignee, ready, limit, tasks, as_json) -> None:
    """List tasks (in queue order: priority, created, id)."""
    ctx = context_for(tasks)
    from ..core import rules

    for status in statuses:
        if status not in rules.STATUSES:
            raise click.BadParameter(f"{status!r} is not one of {', '.join(rules.STATUSES)}", param_hint="--status")
    from ..claims import views

    items, invalid = views.listing(ctx.queue, statuses, project=project, assignee=assignee, ready=ready)
    items = items[:limit]
    _warn_invalid(ctx, invalid)
    if as_json:
        emit_json(items)
        return
    if not items:
        click.echo("no tasks match", err=True)
        return
    width = max(len("ID"), *(len(s["id"]) for s in items))
    click.echo(f"{'ID':<{width}}  PRI  {'STATUS':<11}  {'PROJECT':<14}  TITLE")
    for s in items:
        status = s["status"] + ("*" if s.get("status_missing") else "")
        click.echo(f"{s['id']:<{width}}  P{s['priority']}   {status:<11}  {s['project'] or '-':<14}  {s['title']}")
    unstated = [s["id"] for s in items if s.get("status_missing")]
    if unstated:
        from ..tasks.task import status_missing_note

        more = f" (and {len(unstated) - 1} more marked *)" if len(unstated) > 1 else " (marked *)"
        click.echo(f"hypervisor: {status_missing_note(unstated[0])}{more}", err=True)


@click.command()
@click.argument("task_id", metavar="ID")
@tasks_option
@json_option
def show(task_id, tasks, as_json) -> None:
    """Show one task: its fields, its claim, and its file."""
    cli_hot.show(context_for(tasks), echo_text, as_json, task_id)


@click.command()
@click.option("--by-project", is_flag=True, help="Add counts per project.")
@tasks_option
@json_option
def stats(by_project, tasks, as_json) -> None:
    """Count tasks by status, claims, ready and invalid."""
    ctx = context_for(tasks)
    from ..claims import views

    result = views.stats(ctx.queue, by_project=by_project)
    if as_json:
        emit_json(result)
        return
    click.echo(f"tasks: {result['total']}  ready: {result['ready']}  claimed: {result['claimed']}  "
               f"expired claims: {result['expired_claims']}  invalid: {result['invalid']}")  # fmt: skip
    click.echo("  " + "  ".join(f"{status}: {count}" for status, count in result["by_status"].items()))
    for project, counts in result.get("by_project", {}).items():
        parts = "  ".join(f"{k}: {v}" for k, v in counts.items() if v)
        click.echo(f"  [{project}] {parts}")


@click.command()
@click.option("--ids", multiple=True, metavar="ID", help="Only these tasks (repeatable, or comma-separated).")
@click.option("--batch", "batch_file", type=click.Path(dir_okay=False), help="A file with one task id per line.")
@click.option("--project", metavar="P", help="Only this project.")
@tasks_option
@json_option
def preflight(ids, batch_file, project, tasks, as_json) -> None:
    """Show what a batch would run and what it would skip (done, cancelled, blocked, claimed, waiting on dependencies).

    Exits 3 when nothing of the batch is ready (what `hypervisor run` would exit with: nothing to run), ids that no
    task has included."""
    ctx = context_for(tasks)
    wanted = batch_ids(ids, batch_file)
    from ..claims import views

    result = views.preflight(ctx.queue, ids=wanted, project=project)
    if as_json:
        emit_json(result)
    else:
        print_preflight(result)
    if not result["ready"]:
        from ..claims.advice import nothing_to_run

        click.echo(f"hypervisor: {nothing_to_run()}", err=True)
        sys.exit(3)


@click.command()
@tasks_option
@json_option
def validate(tasks, as_json) -> None:
    """Check every task file against the schema; list each problem with file, field, value and what is allowed.

    Also warns of a file with no status: (the queue takes it as inbox). Exits 1
    if any task is invalid; a warning alone does not change the exit code.
    --json: {checked, invalid, problems, warnings}, each problem and warning with
    path, field, value, allowed and message.
    """
    from ..tasks.validation import check_store

    ctx = context_for(tasks)
    problems, warnings, checked = check_store(ctx.store)
    files = len({p["path"] for p in problems})
    if as_json:
        emit_json({"checked": checked, "invalid": files, "problems": problems, "warnings": warnings})
    else:
        for problem in problems:
            click.echo(problem["message"])
        for warning in warnings:
            click.echo(f"warning: {warning['message']}")
        noted = f", {len(warnings)} warning(s)" if warnings else ""
        click.echo(f"{checked} task files checked, {files} invalid{noted}", err=True)
    if problems:
        sys.exit(1)


@click.command()
@click.option("--tasks", "tasks", metavar="DIR", help="The task root to make (default: tasks: in an existing "
              ".hypervisor.yaml, else ./tasks).")  # fmt: skip
def init(tasks) -> None:
    """Set up hypervisor in the current folder: .hypervisor.yaml and an empty task root, unless they exist.

    Prints what it made and the next steps. Safe to run again: nothing that exists is changed."""
    from ..core.config import CONFIG_NAME
    from ..tasks.store import TaskStore

    here = os.getcwd()
    config_path = os.path.join(here, CONFIG_NAME)
    made = []
    existing = load_config(config_path) if os.path.isfile(config_path) else None
    name = tasks or (existing.tasks if existing and existing.tasks else "tasks")
    if existing is None:
        from ..core import fsutil

        fsutil.atomic_write(config_path, f"# hypervisor settings (see its README)\ntasks: {name}\n".encode())
        made.append(config_path)
    root = os.path.abspath(os.path.join(here, name))
    if not os.path.isdir(root):
        os.makedirs(root)
        made.append(root + os.sep)
    TaskStore(root).ensure_state()
    for path in made:
        click.echo(f"made {path}")
    if not made:
        click.echo(f"already set up: {config_path} names the task root {root}")
    click.echo('next: `hypervisor new "My first task" --body "what is to be done"` makes a task file in '
               f"{name}/ (or write one by hand: YAML frontmatter with title and status: active, then its "
               "description), then `hypervisor list`; agents claim it through the plugin's task tools or "
               "`hypervisor run`")  # fmt: skip
