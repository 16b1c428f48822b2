"""The `hypervisor` command line: one click group whose subcommands call the queue; errors are translated here once.

Exit codes: 0 ok, 1 refused (the text says why), 2 usage error, 3 nothing to claim.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from .. import __version__
from ..claims.backend import open_claims, resolve_backend
from ..core.config import Config, load_config, resolve_task_root
from ..core.errors import HypervisorError
from ..core.timeutil import parse_duration

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


def _ctx(tasks: str | None) -> Context:
    return Context(tasks, click.get_current_context().meta.get("backend"))


def _emit_json(value: Any) -> None:
    """JSON on stdout: indented for a person at a terminal, compact (and faster) for a program."""
    indent = 2 if sys.stdout.isatty() else None
    click.echo(json.dumps(value, indent=indent, ensure_ascii=False))


def _warn_invalid(invalid: list[dict]) -> None:
    if invalid:
        click.echo(
            f"hypervisor: {len(invalid)} task file(s) are invalid and were left out; `hypervisor validate` lists them",
            err=True,
        )


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


# -- reading ----------------------------------------------------------------------------------------------------
@cli.command("list")
@click.option("--status", "statuses", multiple=True, metavar="S", help="Only this status (repeatable).")
@click.option("--project", metavar="P", help="Only this project.")
@click.option("--assignee", metavar="A", help="Only this assignee.")
@click.option("--ready", is_flag=True, help="Only claimable tasks, in queue order.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N tasks.")
@tasks_option
@json_option
def list_cmd(statuses, project, assignee, ready, limit, tasks, as_json) -> None:
    """List tasks (in queue order: priority, created, id)."""
    ctx = _ctx(tasks)
    from ..core import rules

    for status in statuses:
        if status not in rules.STATUSES:
            raise click.BadParameter(f"{status!r} is not one of {', '.join(rules.STATUSES)}", param_hint="--status")
    from ..claims import views

    items, invalid = views.listing(ctx.queue, statuses, project=project, assignee=assignee, ready=ready)
    ctx.store.save_index()
    items = items[:limit]
    _warn_invalid(invalid)
    if as_json:
        _emit_json(items)
        return
    if not items:
        click.echo("no tasks match", err=True)
        return
    width = max(len(s["id"]) for s in items)
    for s in items:
        click.echo(f"{s['id']:<{width}}  P{s['priority']}  {s['status']:<11}  {s['project'] or '-':<14}  {s['title']}")


@cli.command()
@click.argument("task_id", metavar="ID")
@tasks_option
@json_option
def show(task_id, tasks, as_json) -> None:
    """Show one task: its fields, its claim, and its file."""
    ctx = _ctx(tasks)
    summary = ctx.store.find(task_id)
    from ..claims import views

    claim_view = views.claim_view(ctx.queue, task_id)
    if as_json:
        fresh, doc = ctx.store.read(summary)
        _emit_json({**fresh, "claim": claim_view, "frontmatter": doc.data, "body": doc.body})
        return
    with open(ctx.store.path_of(summary), encoding="utf-8") as handle:
        click.echo(f"# {ctx.store.path_of(summary)}")
        if claim_view:
            state = "live" if claim_view["live"] else "expired"
            click.echo(f"# claim: {claim_view['caller']} ({state}, lease until {claim_view['lease_expires_at']})")
        click.echo(handle.read(), nl=False)


@cli.command()
@click.option("--by-project", is_flag=True, help="Add counts per project.")
@tasks_option
@json_option
def stats(by_project, tasks, as_json) -> None:
    """Count tasks by status, claims, ready and invalid."""
    ctx = _ctx(tasks)
    from ..claims import views

    result = views.stats(ctx.queue, by_project=by_project)
    ctx.store.save_index()
    if as_json:
        _emit_json(result)
        return
    click.echo(f"tasks: {result['total']}  ready: {result['ready']}  claimed: {result['claimed']}  "
               f"expired claims: {result['expired_claims']}  invalid: {result['invalid']}")  # fmt: skip
    click.echo("  " + "  ".join(f"{status}: {count}" for status, count in result["by_status"].items()))
    for project, counts in result.get("by_project", {}).items():
        parts = "  ".join(f"{k}: {v}" for k, v in counts.items() if v)
        click.echo(f"  [{project}] {parts}")


@cli.command()
@click.option("--ids", multiple=True, metavar="ID", help="Only these tasks (repeatable, or comma-separated).")
@click.option("--batch", "batch_file", type=click.Path(dir_okay=False), help="A file with one task id per line.")
@click.option("--project", metavar="P", help="Only this project.")
@tasks_option
@json_option
def preflight(ids, batch_file, project, tasks, as_json) -> None:
    """Show what a batch would run and what it would skip (done, cancelled, claimed, waiting on dependencies)."""
    ctx = _ctx(tasks)
    wanted = _batch_ids(ids, batch_file)
    from ..claims import views

    result = views.preflight(ctx.queue, ids=wanted, project=project)
    if as_json:
        _emit_json(result)
        return
    _print_preflight(result)


def _print_preflight(result: dict) -> None:
    click.echo(f"ready: {len(result['ready'])}" + (f"  ({', '.join(result['ready'][:10])}"
               + (", ..." if len(result["ready"]) > 10 else "") + ")" if result["ready"] else ""))  # fmt: skip
    for reason, items in result["skipped"].items():
        if items:
            shown = ", ".join(i if isinstance(i, str) else i["id"] for i in items[:10])
            click.echo(f"skipped {reason}: {len(items)}  ({shown}{', ...' if len(items) > 10 else ''})")
    if result["missing"]:
        click.echo(f"not found: {', '.join(result['missing'])}")


def _batch_ids(ids: tuple[str, ...], batch_file: str | None) -> list[str] | None:
    wanted = [part.strip() for item in ids for part in item.split(",") if part.strip()]
    if batch_file:
        try:
            with open(batch_file, encoding="utf-8") as handle:
                lines = [line.strip() for line in handle]
        except OSError as error:
            raise click.BadParameter(f"cannot read {batch_file}: {error.strerror}", param_hint="--batch") from None
        wanted += [line for line in lines if line and not line.startswith("#")]
    return wanted if (ids or batch_file) else None


@cli.command()
@tasks_option
@json_option
def validate(tasks, as_json) -> None:
    """Check every task file against the schema; list each problem with file, field, value and what is allowed.

    Exits 1 if any task is invalid.
    """
    from ..tasks.validation import validate_store

    ctx = _ctx(tasks)
    problems, checked = validate_store(ctx.store)
    ctx.store.save_index()
    if as_json:
        _emit_json({"checked": checked, "invalid": len({p["path"] for p in problems}), "problems": problems})
    else:
        for problem in problems:
            click.echo(problem["message"])
        files = len({p["path"] for p in problems})
        click.echo(f"{checked} task files checked, {files} invalid", err=True)
    if problems:
        sys.exit(1)


# -- claiming ---------------------------------------------------------------------------------------------------
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
    ctx = _ctx(tasks)
    lease_seconds = parse_duration(lease, "--lease") if lease else None
    result = ctx.queue.claim_next(caller, task_id=task_id, project=project, lease_seconds=lease_seconds)
    ctx.store.save_index()
    if as_json:
        _emit_json(result)
    else:
        click.echo(f"claimed {result['id']} (attempt {result['attempts']}, lease until {result['lease_expires_at']})")
        click.echo(f"token: {result['claim_token']}")


@cli.command()
@click.argument("task_id", metavar="ID")
@token_option
@click.option("--lease", metavar="DURATION", help="New lease length from now (default: the claim's own).")
@tasks_option
@json_option
def renew(task_id, token, caller, lease, tasks, as_json) -> None:
    """Extend the lease of your claim on ID."""
    ctx = _ctx(tasks)
    lease_seconds = parse_duration(lease, "--lease") if lease else None
    result = ctx.queue.renew(task_id, token=token, caller=caller, lease_seconds=lease_seconds)
    _report(result, as_json, f"renewed {task_id} until {result['lease_expires_at']}")


@cli.command()
@click.argument("task_id", metavar="ID")
@token_option
@click.option("--reason", metavar="R", help="Why the task goes back (kept in the event log).")
@tasks_option
@json_option
def release(task_id, token, caller, reason, tasks, as_json) -> None:
    """Give ID back to the queue unfinished (the attempt stays counted)."""
    ctx = _ctx(tasks)
    result = ctx.queue.release(task_id, token=token, caller=caller, reason=reason)
    _report(result, as_json, f"released {task_id} (now {result['status']})")


@cli.command()
@click.argument("task_id", metavar="ID")
@token_option
@click.option("--summary", required=True, metavar="S", help="What was done, for the worker log.")
@click.option("--commit", metavar="SHA", help="The commit holding the work.")
@tasks_option
@json_option
def complete(task_id, token, caller, summary, commit, tasks, as_json) -> None:
    """Mark your claimed task ID done and log the summary in its body."""
    ctx = _ctx(tasks)
    result = ctx.queue.complete(task_id, token=token, caller=caller, summary=summary, commit=commit)
    _report(result, as_json, f"completed {task_id}")


@cli.command()
@click.argument("task_id", metavar="ID")
@token_option
@click.option("--reason", required=True, metavar="R", help="What stops the task, for a person to act on.")
@tasks_option
@json_option
def block(task_id, token, caller, reason, tasks, as_json) -> None:
    """Mark your claimed task ID blocked with a reason."""
    ctx = _ctx(tasks)
    result = ctx.queue.block(task_id, token=token, caller=caller, reason=reason)
    _report(result, as_json, f"blocked {task_id}")


def _report(result: dict, as_json: bool, text: str) -> None:
    if as_json:
        _emit_json(result)
    else:
        click.echo(text)


@cli.command()
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
    """
    from ..triage.triage import TriageRules, triage_queue

    ctx = _ctx(tasks)
    rules = TriageRules.load(rules_file or ctx.config.triage_rules)
    results = triage_queue(ctx.queue, rules, caller=caller, ids=_batch_ids(ids, batch_file), project=project,
                           limit=limit, dry_run=dry_run)  # fmt: skip
    if as_json:
        _emit_json(results)
        return
    for item in results["tasks"]:
        click.echo(f"{item['id']}: {item['action']}" + (f" ({item['detail']})" if item.get("detail") else ""))
    counts = results["counts"]
    click.echo("  ".join(f"{k}: {v}" for k, v in counts.items()), err=True)


AGENT_HELP = ("triage (built in, no model), claude (claude -p with the plugin), gemini (gemini -p --yolo with the "
              "extension), or a command such as './work.sh {task_id}' (placeholders: {task_id} {token} {task_file} "
              "{worker} {attempt} {run_id} {workdir}; run without a shell).")  # fmt: skip


@cli.command()
@click.option("--workers", "-w", "worker_count", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Worker processes at once (1 to 32).")  # fmt: skip
@click.option("--agent", default="triage", show_default=True, metavar="AGENT", help=AGENT_HELP)
@click.option("--ids", multiple=True, metavar="ID", help="Only these tasks (repeatable, or comma-separated).")
@click.option("--batch", "batch_file", type=click.Path(dir_okay=False), help="A file with one task id per line.")
@click.option("--project", metavar="P", help="Only this project.")
@click.option("--timeout", default="30m", show_default=True, metavar="DURATION",
              help="Kill a worker (its whole process group) that runs longer, e.g. 90s, 30m, 2h.")  # fmt: skip
@click.option(
    "--isolation",
    type=click.Choice(["none", "worktree"]),
    default="none",
    show_default=True,
    help="worktree: each task in its own git worktree on branch hypervisor/<task-id>; nothing is merged.",
)
@click.option("--dry-run", is_flag=True, help="Show the preflight and the first worker's command; start nothing.")
@tasks_option
@json_option
def run(worker_count, agent, ids, batch_file, project, timeout, isolation, dry_run, tasks, as_json) -> None:
    """Run a batch: keep N agent workers busy on the queue until the batch is empty.

    \b
    For each ready task of the batch (all tasks, --project, --ids or --batch):
      claim it, start the agent with HYPERVISOR_WORKER=1, HYPERVISOR_TASK_ID and
      HYPERVISOR_CLAIM_TOKEN, renew the lease while it runs, kill it at --timeout,
      then read the outcome from the task file (never from the agent's word).
      A worker that ends without an outcome has its task released and retried,
      up to max_attempts (default 3), then dead-lettered (blocked: max_attempts).

    Done, cancelled, claimed and dependency-blocked tasks are reported and
    skipped; a task whose dependencies finish during the run does run.
    Ctrl-C drains (no new tasks; running workers finish); a second Ctrl-C stops
    the workers and releases their tasks. Logs and run.json/summary.json are
    kept in <task root>/.hypervisor/runs/<run-id>/; `hypervisor status` reads them.

    \b
    Exit: 0 the batch ran, 1 a task was dead-lettered or lost, 2 usage,
          3 nothing to run, 130 interrupted.

    \b
    Examples:
      hypervisor run --tasks examples/tasks                 # built-in triage
      hypervisor run --agent claude --workers 4 --project web --timeout 20m
      hypervisor run --agent './fix.sh {task_id}' --isolation worktree
    """
    from ..supervisor.loop import RunOptions, Supervisor, exit_code
    from ..supervisor.progress import progress_for

    ctx = _ctx(tasks)
    options = RunOptions(workers=worker_count, agent=agent, ids=_batch_ids(ids, batch_file), project=project,
                         timeout=parse_duration(timeout, "--timeout"), isolation=isolation)  # fmt: skip
    if dry_run:
        supervisor = Supervisor(ctx.queue, options)
        supervisor.prepare()
        report = supervisor.preflight()
        if as_json:
            _emit_json(report)
        else:
            _print_preflight(report)
            click.echo(f"would start {min(len(report['ready']), worker_count)} of {worker_count} worker(s) "
                       f"with agent {supervisor.agent.name}; nothing was claimed")  # fmt: skip
        return
    supervisor = Supervisor(ctx.queue, options, progress_for())
    supervisor.prepare()
    report = supervisor.preflight()
    if not report["ready"]:
        _emit_json(report) if as_json else _print_preflight(report)
        click.echo("hypervisor: nothing to run: no task of the batch is ready", err=True)
        sys.exit(3)
    summary = supervisor.run(report)
    if as_json:
        _emit_json(summary)
    else:
        _print_summary(summary, supervisor.folder.summary_path)
    sys.exit(exit_code(summary))


def _print_summary(summary: dict, path: str) -> None:
    for entry in summary["workers"]:
        text = entry.get("outcome") or entry.get("reason") or ""
        extra = f" [{entry['branch']} {entry['commit'][:12]}]" if entry.get("branch") and entry.get("commit") else ""
        click.echo(f"{entry['task_id']}: {entry['status']} ({entry['attempts']} attempt(s), "
                   f"{entry['duration_s']:.1f}s, {entry['tokens']} tokens){extra}: {text}")  # fmt: skip
    skipped = {k: len(v) for k, v in summary["skipped_preflight"].items() if v}
    if skipped:
        click.echo("skipped at preflight: " + ", ".join(f"{k} {v}" for k, v in skipped.items()))
    counts = summary["counts"]
    click.echo(
        f"run {summary['run_id']} {summary['status']} in {summary['runtime_seconds']:.1f}s: "
        + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        + f"; {summary['total_tokens']} tokens"
    )
    click.echo(f"summary: {path}")


@cli.command()
@click.argument("run_id", metavar="[RUN]", required=False)
@tasks_option
@json_option
def status(run_id, tasks, as_json) -> None:
    """Show a run's state from disk (the latest run unless RUN, or a prefix of it, is given), also while it runs."""
    from ..core.timeutil import humanize, now, parse_iso
    from ..supervisor.runs import load_run

    ctx = _ctx(tasks)
    view = load_run(ctx.store.state, run_id)
    if as_json:
        _emit_json(view)
        return
    elapsed = now() - parse_iso(view["started_at"])
    click.echo(f"run {view['run_id']}: {view['status']} · agent {view['agent']} · {view['workers']} worker(s) · "
               f"started {view['started_at']} ({humanize(elapsed)} ago)")  # fmt: skip
    counts = view.get("counts", {})
    click.echo("  " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for attempt in view.get("running", []):
        age = humanize(now() - parse_iso(attempt["started_at"]))
        click.echo(f"  running {attempt['worker']} {attempt['task_id']} (attempt {attempt['attempt']}, {age})")
    for entry in view.get("tasks", []):
        if entry["status"] != "running":
            click.echo(f"  {entry['status']:<12} {entry['task_id']}: {entry.get('outcome') or entry.get('reason')}")
    if "summary" in view:
        click.echo(f"  summary: {os.path.join(ctx.store.state, 'runs', view['run_id'], 'summary.json')}")


@cli.command()
@tasks_option
def mcp(tasks) -> None:
    """Serve the task_manager MCP server on stdio (how Claude Code and Gemini CLI reach the queue)."""
    from .mcp_server import serve

    ctx = _ctx(tasks)

    def open_queue() -> TaskQueue:
        """Opened at the first tool call, and again at each until it works: a project may make its task root
        (or fix its .hypervisor.yaml) while the session runs."""
        ctx._config = ctx._queue = None
        ctx.queue.store.ensure_state()
        return ctx.queue

    serve(open_queue)


@cli.command()
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
    click.echo(f"next: write a task as {os.path.join(name, 'my-first-task.md')} (YAML frontmatter with title and "
               "status: active, then its description), then `hypervisor list`; agents claim it through the "
               "plugin's task tools or `hypervisor run`")  # fmt: skip


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="hypervisor")


if __name__ == "__main__":
    main()
