"""The `hypervisor` command line in click: the group, its shared options and helpers; errors are printed here once.

The commands live in cli_tasks (reading, setup), cli_claims (claim and the claim's ends) and cli_run (run, status,
triage, mcp); the group loads only the one a command line names, from the table in cli_entry. What the hot
commands do is in cli_hot, which cli_fast also runs without click.

Exit codes: 0 ok, 1 refused (the text says why), 2 usage or settings error, 3 nothing to claim or run.
"""

from __future__ import annotations

import functools
import importlib
from gettext import gettext as _
from typing import Any

import click
from click.utils import _make_default_short_help

from .. import __version__
from ..core.errors import HypervisorError
from .cli_context import Context, error_json, failure, json_text, wants_json
from .cli_entry import COMMANDS


class HypervisorGroup(click.Group):
    """A click group that turns HypervisorError into a one-line message and its exit code, and that imports a
    command's module only when the command is used (click's lazy loading, from the table in cli_entry)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attribute = COMMANDS[cmd_name].target.split(":")
        return getattr(importlib.import_module(module, __package__), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands' list from the table's summaries, as click would make it from each command's help."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, _make_default_short_help(COMMANDS[name].summary, limit)) for name in self.list_commands(ctx)]
        with formatter.section(_("Commands")):
            formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["as_json"] = wants_json(args)  # an error, even one in parsing the command, is JSON if asked
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        as_json = ctx.meta.get("as_json", False)
        try:
            return super().invoke(ctx)
        except (HypervisorError, OSError) as error:
            message, code, stdout = failure(error, as_json)
            click.echo(stdout, nl=False)
            click.echo(message, err=True)
            ctx.exit(code)
        except click.ClickException as error:  # click's own usage errors: its text on stderr, and JSON if asked
            if as_json:
                click.echo(error_json(error.format_message(), error.exit_code), nl=False)
            raise


def tasks_option(func):
    """`--tasks DIR` and `--backend SPEC`, accepted after any subcommand's name."""
    func = click.option(
        "--backend",
        metavar="SPEC",
        expose_value=False,
        callback=lambda ctx, _param, value: ctx.meta.__setitem__("backend", value),
        help="Where claims live: `file` (default; one machine) or `redis://host:port/db` for workers on several "
        "machines (default: HYPERVISOR_BACKEND, then backend: in .hypervisor.yaml).",
    )(func)
    return click.option(
        "--tasks",
        "tasks",
        metavar="DIR",
        envvar="HYPERVISOR_TASKS",
        help="Task root (default: HYPERVISOR_TASKS, then tasks: in .hypervisor.yaml, then ./tasks).",
    )(func)


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(func)


def token_option(func):
    func = click.option("--caller", metavar="C", help="Instead of a token: the caller that holds the live claim.")(func)
    return click.option("--token", metavar="T", help="The claim token that `claim` printed.")(func)


def context_for(tasks: str | None) -> Context:
    return Context(tasks, click.get_current_context().meta.get("backend"))


def emit_json(value: Any) -> None:
    """JSON on stdout: indented for a person at a terminal, compact (and faster) for a program."""
    click.echo(json_text(value), nl=False)


# What cli_hot's commands print with: click.echo writing the text as it is.
echo_text = functools.partial(click.echo, nl=False)


def print_preflight(result: dict) -> None:
    click.echo(f"ready: {len(result['ready'])}" + (f"  ({', '.join(result['ready'][:10])}"
               + (", ..." if len(result["ready"]) > 10 else "") + ")" if result["ready"] else ""))  # fmt: skip
    for reason, items in result["skipped"].items():
        if items:
            shown = ", ".join(i if isinstance(i, str) else _named(i) for i in items[:10])
            click.echo(f"skipped {reason}: {len(items)}  ({shown}{', ...' if len(items) > 10 else ''})")
    if result["missing"]:
        click.echo(f"not found: {', '.join(result['missing'])} (no task has that id; `hypervisor list` shows them)")


def _named(item: dict) -> str:
    """A skipped task as preflight prints it: its id, and its status where the heading does not say it."""
    return f"{item['id']} ({item['status']})" if "status" in item else item["id"]


def batch_ids(ids: tuple[str, ...], batch_file: str | None) -> list[str] | None:
    wanted = [part.strip() for item in ids for part in item.split(",") if part.strip()]
    if batch_file:
        try:
            with open(batch_file, encoding="utf-8") as handle:
                lines = [line.strip() for line in handle]
        except OSError as error:
            raise click.BadParameter(f"cannot read {batch_file}: {error.strerror}", param_hint="--batch") from None
        wanted += [line for line in lines if line and not line.startswith("#")]
    return wanted if (ids or batch_file) else None


@click.group(cls=HypervisorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hypervisor")
def cli() -> None:
    """Many agents, one queue of markdown tasks, no task done twice.

    Tasks are *.md files with YAML frontmatter under the task root. A worker claims
    a task (getting a token and a lease), renews the lease while it works, and ends
    with complete or block; a claim whose lease expires can be taken over by exactly
    one other worker. State lives in <task root>/.hypervisor/.

    \b
    Typical worker loop:
      hypervisor claim --caller w1 --json        # exit 3 when nothing is ready
      hypervisor renew TASK --token T            # while working
      hypervisor complete TASK --token T --summary "what was done"

    Every command takes --tasks DIR (the task root) and --backend SPEC (where
    claims live: file, or redis://host:port/db) after its name; `hypervisor
    COMMAND --help` says more. Durations are 90s, 30m, 2h, 1h30m or 1d.

    \b
    Exit: 0 ok, 1 refused (the message says why and what to do), 2 usage or
          settings (a bad option, a missing task root, a bad .hypervisor.yaml),
          3 nothing to claim or run. With --json an error is JSON on stdout too.
    """


def main() -> None:
    """The click command line (cli_entry.main answers what it can without it)."""
    cli(prog_name="hypervisor")


if __name__ == "__main__":  # `python -m hypervisor.frontends.cli`: the commands use the imported module's helpers
    from hypervisor.frontends.cli import main as imported_main

    imported_main()
