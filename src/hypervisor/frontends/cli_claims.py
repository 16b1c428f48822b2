"""The `hypervisor` commands of one claim: claim a task, then renew, release, complete or block it; and reopen.

Their work is in cli_hot (which cli_fast also runs without click); these are their click declarations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import click

from ..claims.attempts import RULE
from ..core.timeutil import DURATION_FORMS
from . import cli_hot
from .cli import context_for, echo_text, emit_json, json_option, tasks_option, token_option

CLAIM_HELP = f"""Claim task ID, or the next ready task. Exit 3 when nothing is ready.

    Prints the claim token (renew, release, complete and block need it), the
    attempt this claim counts and how many are left (--json: attempts,
    attempts_left, max_attempts), and, for a takeover, whose lease it was.

    Attempts: {RULE}
    """

RELEASE_HELP = f"""Give ID back to the queue unfinished (the attempt stays counted).

    The reason goes into the task's worker log and the event log. Prints how many
    attempts are left (--json: attempts, attempts_left, max_attempts).

    Attempts: {RULE}
    """


@click.command(help=CLAIM_HELP)
@click.argument("task_id", metavar="[ID]", required=False)
@click.option("--caller", required=True, metavar="C", help="Who is claiming (a worker name).")
@click.option("--lease", metavar="DURATION", help=f"Lease length: {DURATION_FORMS} (default: lease: in .hypervisor.yaml, "
              "else 30m).")  # fmt: skip
@click.option("--project", metavar="P", help="Claim the next ready task of this project.")
@tasks_option
@json_option
def claim(task_id, caller, lease, project, tasks, as_json) -> None:
    cli_hot.claim(context_for(tasks), echo_text, as_json, task_id, caller, lease, project)


def claimed_task_command(*options: Callable, help: str | None = None) -> Callable:  # noqa: A002 - click's word
    """A click command on a claimed task: ID, --token/--caller, `options`, --tasks/--backend, --json.

    The decorated function holds the command's help; cli_hot's function of the same name does its work.
    """

    def declare(func: Callable) -> click.Command:
        work = getattr(cli_hot, func.__name__)

        @functools.wraps(func)
        def command(tasks, as_json, **values) -> None:
            work(context_for(tasks), echo_text, as_json, **values)

        for decorate in (json_option, tasks_option, *reversed(options), token_option):
            command = decorate(command)
        return click.command(help=help)(click.argument("task_id", metavar="ID")(command))

    return declare


@claimed_task_command(
    click.option(
        "--lease", metavar="DURATION", help=f"New lease length from now: {DURATION_FORMS} (default: the claim's own)."
    )  # fmt: skip
)
def renew() -> None:
    """Extend the lease of your claim on ID."""


@claimed_task_command(
    click.option("--reason", metavar="R", help="Why the task goes back (kept in its worker log and the event log)."),
    help=RELEASE_HELP,
)
def release() -> None:
    """Give ID back to the queue unfinished (the attempt stays counted)."""


@claimed_task_command(
    click.option("--summary", required=True, metavar="S", help="What was done, for the worker log."),
    click.option("--commit", metavar="SHA", help="The commit holding the work."),
)
def complete() -> None:
    """Mark your claimed task ID done and log the summary in its body."""


@claimed_task_command(
    click.option("--reason", required=True, metavar="R", help="What stops the task, for a person to act on.")
)
def block() -> None:
    """Mark your claimed task ID blocked with a reason."""


@click.command()
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
