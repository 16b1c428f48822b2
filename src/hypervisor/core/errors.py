"""The one family of errors hypervisor raises; each edge (CLI, MCP, hook) translates it once."""

from __future__ import annotations


class HypervisorError(Exception):
    """Base of every refusal hypervisor makes on purpose; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(HypervisorError):
    """The request itself is malformed: a bad option value, an unparseable duration."""

    exit_code = 2


class TaskFileError(HypervisorError):
    """A task file cannot be read as a task: names the file, the field, the value and what is allowed (`value` and
    `allowed` also as attributes, for `validate --json`; None where the problem is the file's, not a field's)."""

    def __init__(self, path: str, message: str, field: str | None = None, value: object = None,
                 allowed: str | None = None) -> None:  # fmt: skip
        self.path = path
        self.field = field
        self.message = message
        self.value = value
        self.allowed = allowed
        where = f"{path}: {field}: " if field else f"{path}: "
        super().__init__(where + message)


class InvalidTaskId(HypervisorError):
    """A task id that could name a path outside the root, or is otherwise not allowed."""


class TaskNotFound(HypervisorError):
    """No task with that id exists under the task root."""


class TaskExists(HypervisorError):
    """A new task was asked for under an id that a task file under the root already holds (or is named by)."""


class TaskRootMissing(TaskNotFound):
    """The task root itself does not exist: a setting to fix (exit 2, as a usage error), not a refusal."""

    exit_code = 2


class ClaimRefused(HypervisorError):
    """A claim, renewal, release, completion or block was refused; the text says why and what to do."""


class NothingToClaim(HypervisorError):
    """No task is claimable right now."""

    exit_code = 3


class ConfigError(HypervisorError):
    """The project's .hypervisor.yaml or a triage rules file is unusable: a setting to fix (exit 2, as usage)."""

    exit_code = 2


class HookInputError(HypervisorError):
    """A hook payload hypervisor cannot read; the hook lets the call through and says why on stderr."""


class BackendError(HypervisorError):
    """The claim backend is misconfigured or cannot be reached: names the backend and what to check."""


class StorageError(HypervisorError):
    """A file hypervisor had to write or read could not be: names the file, the cause and what to do about it."""


class ConcurrentEdit(HypervisorError):
    """A task file kept changing under hypervisor's write (someone saving it again and again): nothing was written."""


# What to do about the storage errors a person can fix, by errno name.
_STORAGE_ADVICE = {
    "ENOSPC": "free space on that disk, then run the command again",
    "EDQUOT": "the disk quota is used up: free some of it, then run the command again",
    "EROFS": "the file system is mounted read-only: remount it writable (or use --tasks on a writable copy), then "
    "run the command again",
    "EACCES": "this user may not write there: fix the permissions (ls -l shows them), then run the command again",
    "EPERM": "the file is protected (immutable or owned by another user): fix that, then run the command again",
    "EIO": "the disk reported an I/O error: check the disk (dmesg), then run the command again",
}


# The errors of a whole disk rather than of one file: every other write there fails the same way.
_DISK_ERRORS = ("ENOSPC", "EDQUOT", "EROFS", "EIO")


def disk_failed(error: OSError) -> bool:
    """Whether `error` says the disk is full, over quota, read-only or failing (not one file's permissions): a
    batch stops taking new work on it instead of failing every task in turn."""
    import errno as errno_names

    return errno_names.errorcode.get(error.errno or 0, "") in _DISK_ERRORS


def storage_error(error: OSError) -> HypervisorError:
    """An OSError from the file system as the one-line StorageError the edges print (path, cause, advice); an
    OSError with no fixable cause is returned as a StorageError too, with its own text."""
    import errno as errno_names

    name = errno_names.errorcode.get(error.errno or 0, "")
    where = error.filename if error.filename is not None else "a file"
    cause = f"{error.strerror or error} ({name})" if name else str(error.strerror or error)
    advice = _STORAGE_ADVICE.get(name, "check that file, then run the command again")
    verb = "cannot write" if name in ("ENOSPC", "EDQUOT", "EROFS") else "cannot use"
    return StorageError(f"{verb} {where}: {cause}; {advice}")
