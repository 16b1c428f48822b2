"""The `hypervisor` console script: answers --version and --help without click, hands the rest to the fastest path.

Standard library only, and little of it: an agent runs the CLI in a loop, and every import here is paid on every
call. COMMANDS is the one table of subcommands (click's group loads a command's module from it when that command
is used); `python -m hypervisor.frontends.cli_help` records the group's --help into cli_help.txt, which a test
holds to click's own output.
"""

# No `from __future__ import annotations` here: it imports the __future__ module, and nothing here needs it.
import os
import sys

HELP_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli_help.txt")
HELP_WIDTH = 78  # click's help width on a terminal of 80 columns or more, and off a terminal: what HELP_FILE holds
COMPLETE_VAR = "_HYPERVISOR_COMPLETE"  # click's shell completion asks through it


class Entry:
    """A subcommand: where its click command is (module:attribute, relative to frontends) and its one-line help."""

    __slots__ = ("target", "summary")

    def __init__(self, target: str, summary: str) -> None:
        self.target = target
        self.summary = summary


COMMANDS = {
    "block": Entry(".cli_claims:block", "Mark your claimed task ID blocked with a reason."),
    "board": Entry(".cli_board:board", "Serve a live, read-only web page of the queue and the running batch."),
    "claim": Entry(".cli_claims:claim", "Claim task ID, or the next ready task."),
    "complete": Entry(".cli_claims:complete", "Mark your claimed task ID done and log the summary in its body."),
    "init": Entry(
        ".cli_tasks:init",
        "Set up hypervisor in the current folder: .hypervisor.yaml and an empty task root, unless they exist.",
    ),
    "list": Entry(".cli_tasks:list_cmd", "List tasks (in queue order: priority, created, id)."),
    "mcp": Entry(
        ".cli_run:mcp", "Serve the task_manager MCP server on stdio (how Claude Code and Gemini CLI reach the queue)."
    ),
    "new": Entry(".cli_new:new", "Create a task file TITLE under the task root and print its id."),
    "preflight": Entry(
        ".cli_tasks:preflight",
        "Show what a batch would run and what it would skip (done, cancelled, blocked, claimed, waiting on dependencies).",
    ),
    "release": Entry(".cli_claims:release", "Give ID back to the queue unfinished (the attempt stays counted)."),
    "renew": Entry(".cli_claims:renew", "Extend the lease of your claim on ID."),
    "reopen": Entry(
        ".cli_claims:reopen",
        "Put a blocked, dead-lettered, done, cancelled, review or stranded task ID back to active.",
    ),
    "run": Entry(".cli_run:run", "Run a batch: keep N agent workers busy on the queue until the batch is empty."),
    "show": Entry(".cli_tasks:show", "Show one task: its fields, its claim, and its file."),
    "stats": Entry(".cli_tasks:stats", "Count tasks by status, claims, ready and invalid."),
    "status": Entry(
        ".cli_run:status",
        "Show a run's state from disk (the latest run unless RUN, or a prefix of it, is given), also while it runs.",
    ),
    "triage": Entry(
        ".cli_run:triage",
        "Triage ready tasks without a model: close those with a Close Reason, assign the rest, link their project.",
    ),
    "validate": Entry(
        ".cli_tasks:validate",
        "Check every task file against the schema; list each problem with file, field, value and what is allowed.",
    ),
}


def main() -> None:
    """Console-script entry point: `hypervisor ARGS...`, exiting with the command's code."""
    args = sys.argv[1:]
    if not os.environ.get(COMPLETE_VAR):
        if args == ["--version"]:
            from .. import __version__

            _write(f"hypervisor, version {__version__}\n")
            sys.exit(0)
        if args in (["--help"], ["-h"]) and terminal_columns() >= HELP_WIDTH + 2:
            with open(HELP_FILE, encoding="utf-8") as handle:
                _write(handle.read())
            sys.exit(0)
        from . import cli_fast

        code = cli_fast.run(args)
        if code is not None:
            sys.exit(code)
    from .cli import main as click_main

    click_main()


def terminal_columns() -> int:
    """The columns click formats help for: shutil.get_terminal_size's, without importing shutil (and re)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _write(text: str) -> None:
    """Print as click.echo does an ASCII text: nothing where there is no stdout; a closed pipe exits 1 quietly."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        from .cli_fast import quiet_broken_pipe

        sys.exit(quiet_broken_pipe())
