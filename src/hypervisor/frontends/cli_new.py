"""The `hypervisor new` command: one new task file, made by tasks/creation.py (which MCP create_task uses too)."""

from __future__ import annotations

import os
import sys

import click

from . import cli_hot
from .cli import context_for, echo_text, json_option, tasks_option


def _split(values: tuple[str, ...]) -> list[str]:
    """Repeated and comma-separated values as one list: `--depends-on a,b --depends-on c`."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@click.command("new")
@click.argument("title")
@click.option("--id", "task_id", metavar="ID", help="The task's id (default: a slug of the title, made unique).")
@click.option("--project", metavar="P", help="The project it belongs to.")
@click.option("--priority", metavar="N", help="0 (highest) to 4; default 2.")
@click.option("--depends-on", "depends_on", multiple=True, metavar="ID,...",
              help="Tasks that must be done first (comma-separated or repeated).")  # fmt: skip
@click.option("--scope", multiple=True, metavar="GLOB,...",
              help="Where a worker may edit, e.g. 'src/auth/**' (comma-separated or repeated).")  # fmt: skip
@click.option("--tag", "tags", multiple=True, metavar="T", help="A tag (repeatable).")
@click.option("--status", type=click.Choice(["inbox", "active"]), default="active", show_default=True,
              help="Both are claimable; inbox reads as not yet looked at.")  # fmt: skip
@click.option("--body", metavar="TEXT", help="The task's description (markdown); `-` reads it from stdin.")
@tasks_option
@json_option
def new(title, task_id, project, priority, depends_on, scope, tags, status, body, tasks, as_json) -> None:
    """Create a task file TITLE under the task root and print its id.

    \b
    The id is --id, or a slug of the title (`Fix the login page` makes
    fix-the-login-page); when a task already has it, -2, -3, ... is added.
    Safe to run many at once: each gets its own id and file.
    Examples:
      hypervisor new "Fix the login page" --priority 1 --scope 'src/auth/**'
      git log -1 --format=%B | hypervisor new "Follow up on the release" --body -

    Prints the id on stdout (the file's path on stderr); --json prints the task
    as `show --json` does. Exit 1 if --id is taken.
    """
    from ..tasks import creation

    if body == "-":
        body = sys.stdin.read()
    ctx = context_for(tasks)
    summary, _ = creation.create(
        ctx.store, title, task_id=task_id, project=project, priority=priority, depends_on=_split(depends_on),
        scope=_split(scope), tags=list(tags), status=status, body=body or "",
    )  # fmt: skip
    ctx.queue.event("created", summary["id"], path=summary["path"])
    missing = [dep for dep in summary["depends_on"] if dep not in ctx.store.indexed_statuses([dep])]
    if missing:
        click.echo(f"hypervisor: {summary['id']} waits on {', '.join(missing)}, which no task has yet; it is not "
                   "claimable until each exists and is done", err=True)  # fmt: skip
    if as_json:
        cli_hot.show(ctx, echo_text, True, summary["id"])
        return
    click.echo(summary["id"])
    path = os.path.join(ctx.store.root, summary["path"])
    click.echo(f"hypervisor: made {path}; `hypervisor show {summary['id']}` shows it", err=True)
