"""The commands an agent loops on, run from argv without importing click (about 20 ms of every call).

Only a plain, well-formed command line is taken here: options by their long names, each once, with a value that
does not start with "-", and every required value present. Anything else (help, a typo, a missing value, `--`,
shell completion) returns None and click runs the command, so every message and exit code stays click's own.
tests/test_cli_fast.py holds each Spec to its click command and the parse to click's.
"""

from __future__ import annotations

import errno
import io
import os
import sys

TYPE_CHECKING = False  # typing costs the hot commands 2 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TextIO

    from .cli_context import Context

# click.echo strips these from text that is not going to a terminal (click/_compat.py's _ansi_re).
ANSI_PATTERN = r"\033\[[0-?]*[ -/]*[@-~]"
TASKS_ENVVAR = "HYPERVISOR_TASKS"  # --tasks' envvar (cli.tasks_option)


class Spec:
    """A command's parameters as click declares them: its argument, options taking a value, and required ones."""

    def __init__(
        self, argument: str, argument_required: bool, options: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> None:
        self.argument = argument
        self.argument_required = argument_required
        self.options = {f"--{name.replace('_', '-')}": name for name in (*options, "tasks", "backend")}
        self.required = required


TOKEN = ("token", "caller")
SPECS = {
    "claim": Spec("task_id", False, ("caller", "lease", "project"), required=("caller",)),
    "renew": Spec("task_id", True, (*TOKEN, "lease")),
    "release": Spec("task_id", True, (*TOKEN, "reason")),
    "complete": Spec("task_id", True, (*TOKEN, "summary", "commit"), required=("summary",)),
    "block": Spec("task_id", True, (*TOKEN, "reason"), required=("reason",)),
    "show": Spec("task_id", True, ()),
}


def parse(spec: Spec, args: list[str]) -> dict | None:
    """The values click would pass the command for `args` (the words after its name), or None to leave it to click."""
    values: dict = {name: None for name in spec.options.values()}
    values["as_json"] = False
    positional = []
    given = set()
    words = iter(args)
    for word in words:
        if not word.startswith("-"):
            positional.append(word)
            continue
        name, equals, value = word.partition("=")
        if name == "--json" and not equals:
            dest = "as_json"
        elif name in spec.options:
            dest = spec.options[name]
            if not equals:
                value = next(words, None)
                if value is None or value.startswith("-"):
                    return None
        else:
            return None  # -h, --help, a short or unknown option, `--`, `-`
        if dest in given:
            return None
        given.add(dest)
        values[dest] = True if dest == "as_json" else value
    if len(positional) > 1 or (spec.argument_required and not positional):
        return None
    if any(values[name] is None for name in spec.required):
        return None
    values[spec.argument] = positional[0] if positional else None
    if values["tasks"] is None:
        values["tasks"] = os.environ.get(TASKS_ENVVAR) or None
    return values


def run(args: list[str]) -> int | None:
    """Run `hypervisor <args>` if it is a hot command in a plain form on plain streams: its exit code; else None."""
    spec = SPECS.get(args[0]) if args else None
    if spec is None or not (_plain(sys.stdout) and _plain(sys.stderr)):
        return None
    values = parse(spec, args[1:])
    if values is None:
        return None
    from . import cli_hot
    from .cli_context import Context

    context = Context(values.pop("tasks"), values.pop("backend"))
    try:
        return _reported(getattr(cli_hot, args[0]), context, values)
    except (EOFError, KeyboardInterrupt):  # as click's main: a blank line closing the ^C, then its own words
        try:
            echo("\n", sys.stderr)
            echo("Aborted!\n", sys.stderr)
        except (EOFError, KeyboardInterrupt):
            pass
        return 1
    except OSError as error:  # stderr itself is a closed pipe: as click's main, quietly, exit 1
        if error.errno != errno.EPIPE:
            raise
        return quiet_broken_pipe()


def quiet_broken_pipe() -> int:
    """What click's main does when output meets a closed pipe: silence the streams' last flush; exit code 1."""
    from click.utils import _PacifyFlushWrapper

    sys.stdout = _PacifyFlushWrapper(sys.stdout)
    sys.stderr = _PacifyFlushWrapper(sys.stderr)
    return 1


def _reported(command: Callable, context: Context, values: dict) -> int:
    """Run the command; a refusal or an unusable file as click's group reports it (one line, its exit code)."""
    from .cli_context import failure

    try:
        command(context, echo, **values)
    except Exception as error:  # noqa: BLE001 - only what `failure` knows is reported; the rest is raised
        reported = failure(error, values.get("as_json", False))
        if reported is None:
            raise
        message, code, stdout = reported
        echo(stdout)
        echo(message + "\n", sys.stderr)
        return code
    return 0


def echo(text: str, stream: TextIO | None = None) -> None:
    """click.echo(text, nl=False) on a plain stream: ANSI styles stripped unless it is a terminal; flushed."""
    stream = stream or sys.stdout
    if "\033" in text and not _isatty(stream):
        import re

        text = re.sub(ANSI_PATTERN, "", text)
    if text:
        stream.write(text)
    stream.flush()


def _plain(stream: TextIO | None) -> bool:
    """Whether click.echo would write to `stream` as it is: a text file whose encoding is not ASCII.

    click rewraps an ASCII stream as UTF-8 (and a Jupyter kernel's keeps its styles): those go to click."""
    import codecs

    encoding = getattr(stream, "encoding", None)
    if stream is None or not isinstance(stream, io.TextIOWrapper) or not encoding or stream.errors is None:
        return False
    try:
        return codecs.lookup(encoding).name != "ascii"
    except LookupError:
        return True


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except Exception:  # noqa: BLE001 - as click's isatty
        return False
