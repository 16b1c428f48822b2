"""What every `hypervisor` command shares without click: the Context, JSON text, and an error as its one line."""

from __future__ import annotations

import sys

from ..claims.backend import open_claims, resolve_backend
from ..core.config import Config, load_config, resolve_task_root
from ..core.errors import HypervisorError, storage_error

TYPE_CHECKING = False  # typing costs the hot commands 2 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Any

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


def json_text(value: Any) -> str:
    """JSON for stdout, with its newline: indented for a person at a terminal, compact (and faster) for a program."""
    if not sys.stdout.isatty():
        from ..core import lightjson  # json.dumps' own C encoder, without the 8 ms json's import costs

        return lightjson.dumps(value, ensure_ascii=False) + "\n"
    import json

    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def failure(error: Exception, as_json: bool = False) -> tuple[str, int, str] | None:
    """The one line (for stderr), exit code and stdout text of an error the CLI reports without a traceback, or None.

    The stdout text is empty, or with `as_json` the error as JSON, `{"error": line, "code": exit code}`, so that a
    program that asked for JSON gets JSON on every path. A full, read-only or failing disk (an OSError) is one line
    naming the file, never a traceback."""
    if isinstance(error, OSError):
        error = storage_error(error)
    if not isinstance(error, HypervisorError):
        return None
    return f"hypervisor: {error}", error.exit_code, error_json(str(error), error.exit_code) if as_json else ""


def error_json(message: str, code: int) -> str:
    """An error as `--json` prints it on stdout: its text and the exit code that goes with it."""
    return json_text({"error": message, "code": code})


def wants_json(args: list[str]) -> bool:
    """Whether a command line (the words after `hypervisor`) asks for JSON: `--json` before any `--`."""
    for word in args:
        if word == "--":
            return False
        if word == "--json":
            return True
    return False
