"""The `hypervisor` command line: the click group, its shared options and helpers; errors are translated here once.

The commands live in cli_tasks (reading, setup), cli_claims (claim and the claim's ends) and cli_run (run, status,
triage, mcp); each registers itself on `cli` when imported, which this module does at its end.

Exit codes: 0 ok, 1 refused (the text says why), 2 usage error, 3 nothing to claim.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from .. import __version__
from ..claims.backend import open_claims, resolve_backend
from ..core.config import Config, load_config, resolve_task_root
from ..core.errors import HypervisorError, storage_error

if TYPE_CHECKING:
    from ..claims.queue import TaskQueue
    from ..tasks.store import TaskStore


class Context:
    """What every subcommand needs: settings, the store and the queue, made on first use."""

    def __init__(self, tasks: str | None, backend: str | None = None) -> None:
        self.tasks_option = tasks
        self.backend_option = backend
        self._config: Config | None = None
        self._queue: TaskQueue | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config()
        return self._config

    @property
    def store(self) -> TaskStore:
        return self.queue.store

    @property
    def queue(self) -> TaskQueue:
        if self._queue is None:
            from ..claims.queue import TaskQueue
            from ..tasks.store import TaskStore

            root = resolve_task_root(self.tasks_option, self.config)
            store = TaskStore(root)
            backend = resolve_backend(self.backend_option, self.config.backend)
            self._queue = TaskQueue(store, self.config, open_claims(backend, store.state))
        return self._queue


class HypervisorGroup(click.Group):
    """A click group that turns HypervisorError into a one-line message and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HypervisorError as error:
            click.echo(f"hypervisor: {error}", err=True)
            ctx.exit(error.exit_code)
        except OSError as error:  # a full, read-only or failing disk: one line naming the file, never a traceback
            problem = storage_error(error)
            click.echo(f"hypervisor: {problem}", err=True)
            ctx.exit(problem.exit_code)


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
    indent = 2 if sys.stdout.isatty() else None
    click.echo(json.dumps(value, indent=indent, ensure_ascii=False))


def print_preflight(result: dict) -> None:
    click.echo(f"ready: {len(result['ready'])}" + (f"  ({', '.join(result['ready'][:10])}"
               + (", ..." if len(result["ready"]) > 10 else "") + ")" if result["ready"] else ""))  # fmt: skip
    for reason, items in result["skipped"].items():
        if items:
            shown = ", ".join(i if isinstance(i, str) else i["id"] for i in items[:10])
            click.echo(f"skipped {reason}: {len(items)}  ({shown}{', ...' if len(items) > 10 else ''})")
    if result["missing"]:
        click.echo(f"not found: {', '.join(result['missing'])}")


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
    """


# The commands register themselves on `cli`; importing them here (after `cli` exists) is what adds them.
from . import cli_claims, cli_run, cli_tasks  # noqa: E402, F401


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="hypervisor")


if __name__ == "__main__":  # `python -m hypervisor.frontends.cli`: the commands are on the imported module's group
    from hypervisor.frontends.cli import main as imported_main

    imported_main()
