"""The `hypervisor` commands of one claim: claim a task, then renew, release, complete or block it."""

from __future__ import annotations

import functools
from collections.abc import Callable

import click

from ..core.timeutil import parse_duration
from .cli import Context, cli, context_for, emit_json, json_option, tasks_option, token_option


@cli.command()
@click.argument("task_id", metavar="[ID]", required=False)
@click.option("--caller", required=True, metavar="C", help="Who is claiming (a worker name).")
@click.option("--lease", metavar="DURATION", help="Lease length, e.g. 30m (default from settings, else 30m).")
@click.option("--project", metavar="P", help="Claim the next ready task of this project.")
@tasks_option
@json_option
def claim(task_id, caller, lease, project, tasks, as_json) -> None:
    """Claim task ID, or the next ready task. Exit 3 when nothing is ready.

    Prints the claim token; renew, release, complete and block need it.
    """
    ctx = context_for(tasks)
    lease_seconds = parse_duration(lease, "--lease") if lease else None
    result = ctx.queue.claim_next(caller, task_id=task_id, project=project, lease_seconds=lease_seconds)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"claimed {result['id']} (attempt {result['attempts']}, lease until {result['lease_expires_at']})")
        click.echo(f"token: {result['claim_token']}")


def claimed_task_command(*options: Callable) -> Callable:
    """Register a command on a claimed task: ID, --token/--caller, `options`, --tasks/--backend, --json.

    The decorated function gets the Context and the command's values and returns the queue's result and the line
    to print for it; with --json the result is printed instead.
    """

    def register(func: Callable[..., tuple[dict, str]]) -> click.Command:
        @functools.wraps(func)
        def command(tasks, as_json, **values) -> None:
            result, text = func(context_for(tasks), **values)
            if as_json:
                emit_json(result)
            else:
                click.echo(text)

        for decorate in (json_option, tasks_option, *reversed(options), token_option):
            command = decorate(command)
        return cli.command()(click.argument("task_id", metavar="ID")(command))

    return register


@claimed_task_command(
    click.option("--lease", metavar="DURATION", help="New lease length from now (default: the claim's own).")
)
def renew(ctx: Context, task_id, token, caller, lease) -> tuple[dict, str]:
    """Extend the lease of your claim on ID."""
    lease_seconds = parse_duration(lease, "--lease") if lease else None
    result = ctx.queue.renew(task_id, token=token, caller=caller, lease_seconds=lease_seconds)
    return result, f"renewed {task_id} until {result['lease_expires_at']}"


@claimed_task_command(click.option("--reason", metavar="R", help="Why the task goes back (kept in the event log)."))
def release(ctx: Context, task_id, token, caller, reason) -> tuple[dict, str]:
    """Give ID back to the queue unfinished (the attempt stays counted)."""
    result = ctx.queue.release(task_id, token=token, caller=caller, reason=reason)
    return result, f"released {task_id} (now {result['status']})"


@claimed_task_command(
    click.option("--summary", required=True, metavar="S", help="What was done, for the worker log."),
    click.option("--commit", metavar="SHA", help="The commit holding the work."),
)
def complete(ctx: Context, task_id, token, caller, summary, commit) -> tuple[dict, str]:
    """Mark your claimed task ID done and log the summary in its body."""
    result = ctx.queue.complete(task_id, token=token, caller=caller, summary=summary, commit=commit)
    return result, f"completed {task_id}"


@claimed_task_command(
    click.option("--reason", required=True, metavar="R", help="What stops the task, for a person to act on.")
)
def block(ctx: Context, task_id, token, caller, reason) -> tuple[dict, str]:
    """Mark your claimed task ID blocked with a reason."""
    return ctx.queue.block(task_id, token=token, caller=caller, reason=reason), f"blocked {task_id}"


@cli.command()
@click.argument("task_id", metavar="ID")
@click.option("--reason", metavar="R", help="Why it is reopened (goes into its worker log).")
@click.option(
    "--reset-attempts",
    is_flag=True,
    help="Give it all of max_attempts again (a dead-lettered task otherwise gets one more attempt).",
)
@tasks_option
@json_option
def reopen(task_id, reason, reset_attempts, tasks, as_json) -> None:
    """Put a blocked, dead-lettered, done, cancelled, review or stranded task ID back to active.

    \b
    A line in its worker log says who reopened it, from what, and why. Refused
    while a live claim holds the task (its holder can release it).
    Example:
      hypervisor reopen fix-login --reason "the API key is in the vault now" --reset-attempts
    """
    ctx = context_for(tasks)
    result = ctx.queue.reopen(task_id, reason=reason, reset_attempts=reset_attempts)
    if as_json:
        emit_json(result)
    else:
        left = result["attempts_left"]
        click.echo(
            f"reopened {task_id}: {result['previous_status']} -> active ({left} attempt{'s' * (left != 1)} left)"
        )
