"""The one family of errors hypervisor raises; each edge (CLI, MCP, hook) translates it once."""

from __future__ import annotations


class HypervisorError(Exception):
    """Base of every refusal hypervisor makes on purpose; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(HypervisorError):
    """The request itself is malformed: a bad option value, an unparseable duration."""

    exit_code = 2


class TaskFileError(HypervisorError):
    """A task file cannot be read as a task: names the file, the field, the value and what is allowed."""

    def __init__(self, path: str, message: str, field: str | None = None) -> None:
        self.path = path
        self.field = field
        self.message = message
        where = f"{path}: {field}: " if field else f"{path}: "
        super().__init__(where + message)


class InvalidTaskId(HypervisorError):
    """A task id that could name a path outside the root, or is otherwise not allowed."""


class TaskNotFound(HypervisorError):
    """No task with that id exists under the task root."""


class ClaimRefused(HypervisorError):
    """A claim, renewal, release, completion or block was refused; the text says why and what to do."""


class NothingToClaim(HypervisorError):
    """No task is claimable right now."""

    exit_code = 3


class ConfigError(HypervisorError):
    """The project's .hypervisor.yaml or a triage rules file is unusable."""


class HookInputError(HypervisorError):
    """A hook payload hypervisor cannot read; the hook lets the call through and says why on stderr."""


class BackendError(HypervisorError):
    """The claim backend is misconfigured or cannot be reached: names the backend and what to check."""
