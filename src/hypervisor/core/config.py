"""Project settings from .hypervisor.yaml, and where the task root is."""

from __future__ import annotations

import os

from . import rules
from .errors import ConfigError
from .timeutil import parse_duration

TYPE_CHECKING = False  # typing costs a hook 4 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Mapping

CONFIG_NAME = ".hypervisor.yaml"
STATE_DIR = ".hypervisor"
GATE_MODES = ("off", "warn", "block", "all")
KNOWN_KEYS = {"tasks", "gate", "max_attempts", "lease", "triage_rules", "backend", "verify"}


# What the flat reader takes as a plain string (YAML reads these characters as that same string), without `re`:
# the hooks read settings on every call.
_ASCII_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGITS = frozenset("0123456789")
_PLAIN_FIRST = _ASCII_LETTERS | frozenset("/._")
_PLAIN_REST = _ASCII_LETTERS | _DIGITS | frozenset("/._:@+-")
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null", ".inf", ".nan"}


class Config:
    """Settings in force; `path` is the .hypervisor.yaml they came from, if any."""

    def __init__(self, path: str | None = None, tasks: str | None = None, gate: str = "block",
                 max_attempts: int = rules.DEFAULT_MAX_ATTEMPTS, lease_seconds: float = rules.DEFAULT_LEASE_SECONDS,
                 triage_rules: str | None = None, backend: str | None = None,
                 verify: str | None = None) -> None:  # fmt: skip
        self.path = path
        self.tasks = tasks
        self.gate = gate
        self.max_attempts = max_attempts
        self.lease_seconds = lease_seconds
        self.triage_rules = triage_rules
        self.backend = backend
        self.verify = verify  # a shell command run in a worktree; exit 0 passes (hypervisor run --land)


def find_config(start: str | None = None) -> str | None:
    """The nearest .hypervisor.yaml in `start` or a parent folder."""
    here = os.path.abspath(start or os.getcwd())
    while True:
        candidate = os.path.join(here, CONFIG_NAME)
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def load_config(path: str | None = None, start: str | None = None) -> Config:
    """Settings from `path` (or the nearest .hypervisor.yaml); ConfigError naming the key and value if bad."""
    path = path or find_config(start)
    if path is None:
        return Config()
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read settings: {error}") from None
    data = read_flat(text)
    if data is None:
        data = _read_yaml(path, text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: settings must be a mapping of 'key: value' lines")
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(KNOWN_KEYS))}")
    base = os.path.dirname(path)
    config = Config(path=path)
    if data.get("tasks") is not None:
        config.tasks = os.path.join(base, str(data["tasks"]))
    gate = data.get("gate", "block")
    if gate is False:  # YAML 1.1 reads a bare `off` as false
        gate = "off"
    if gate not in GATE_MODES:
        raise ConfigError(f"{path}: gate: {gate!r} is not one of {', '.join(GATE_MODES)}")
    config.gate = gate
    max_attempts = data.get("max_attempts", rules.DEFAULT_MAX_ATTEMPTS)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ConfigError(f"{path}: max_attempts: {max_attempts!r} is not allowed: use a whole number 1 or more")
    config.max_attempts = max_attempts
    if data.get("lease") is not None:
        config.lease_seconds = parse_duration(data["lease"], f"{path}: lease:")
    if data.get("triage_rules") is not None:
        config.triage_rules = os.path.join(base, str(data["triage_rules"]))
    config.backend = data.get("backend")
    config.verify = check_verify(data.get("verify"), f"{path}: verify:")
    return config


def check_verify(value: object, where: str) -> str | None:
    """A verify command as given (a one-line shell command), None if unset; ConfigError naming `where` if bad."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\n" in value.strip() or "\0" in value:
        raise ConfigError(f"{where} {value!r} is not allowed: give one shell command on one line, e.g. "
                          "'python -m pytest -q' (exit 0 passes)")  # fmt: skip
    return value.strip()


def read_flat(text: str) -> dict | None:
    """The settings of a file of plain top-level `key: value` lines, or None if it needs a YAML parser.

    Hooks start with `python -S` (no site-packages, so no PyYAML) and must stay fast; every typical settings file
    is flat, and anything this reader is unsure of goes to PyYAML, so the two never disagree.
    """
    if any(char in text for char in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\ufeff"):
        return None  # line breaks Python splits on and YAML does not (or a BOM): leave those to PyYAML
    data: dict = {}
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.isidentifier() or (value and value[0] != " ") or key in data:
            return None
        value = _without_comment(value.strip())
        if len(value) >= 2 and value[0] == value[-1] == "'" and "'" not in value[1:-1]:
            data[key] = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"' and not set('"\\') & set(value[1:-1]):
            data[key] = value[1:-1]
        elif value and set(value) <= _DIGITS and (value == "0" or value[0] != "0"):
            data[key] = int(value)
        elif _is_plain_string(value) and value.lower() not in _YAML_WORDS and not value.endswith(":"):
            data[key] = value
        else:
            return None
    return data


def _without_comment(value: str) -> str:
    """`value` without a trailing ` # comment` (a # after a space or tab starts a comment in YAML)."""
    cut = min((index for index in (value.find(" #"), value.find("\t#")) if index >= 0), default=-1)
    return value[:cut].rstrip(" \t") if cut >= 0 else value


def _is_plain_string(value: str) -> bool:
    if value[:1] in _PLAIN_FIRST and set(value[1:]) <= _PLAIN_REST:
        return True
    letters = value.lstrip("0123456789")  # or digits then lowercase letters: 30m, 2h
    return letters != value and bool(letters) and letters.isascii() and letters.isalpha() and letters.islower()


def _read_yaml(path: str, text: str) -> object:
    try:
        import yaml
    except ImportError:  # started with `python -S` (a hook): look in site-packages only now that a file needs it
        import site

        site.main()
        try:
            import yaml
        except ImportError:
            raise ConfigError(
                f"{path}: needs a YAML parser and PyYAML is not installed for this Python; "
                "write the settings as plain 'key: value' lines"
            ) from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as error:  # one line: where, and what is wrong (PyYAML's own text spans several)
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: is not valid YAML{where}: {problem}; write plain 'key: value' lines") from None


def resolve_task_root(cli_value: str | None, config: Config, env: Mapping[str, str] | None = None,
                      base: str | None = None) -> str:  # fmt: skip
    """--tasks DIR > HYPERVISOR_TASKS > tasks: in .hypervisor.yaml > ./tasks, as an absolute path.

    Relative values are taken from `base` (default: the current folder); `env` defaults to os.environ.
    """
    root = cli_value or (os.environ if env is None else env).get("HYPERVISOR_TASKS") or config.tasks or "tasks"
    return os.path.abspath(os.path.join(base or os.getcwd(), root))


def command_for(command: str, task_root: str, config: Config) -> str:
    """`hypervisor COMMAND` as a hint to follow: with `--tasks ROOT` unless ROOT is the task root that command
    finds by itself here (from .hypervisor.yaml or ./tasks; an environment variable may not be set where it runs)."""
    if os.path.abspath(task_root) == resolve_task_root(None, config, env={}):
        return f"hypervisor {command}"
    shown = os.path.relpath(task_root)
    if shown.startswith(".."):
        shown = os.path.abspath(task_root)
    if not all(char.isalnum() or char in "/._-+:@" for char in shown):  # shlex.quote, without importing re
        shown = "'" + shown.replace("'", "'\"'\"'") + "'"
    return f"hypervisor {command} --tasks {shown}"


def state_dir(task_root: str) -> str:
    """Where a task root keeps its claims, locks, runs, events and index."""
    return os.path.join(task_root, STATE_DIR)


def lock_path(state: str, task_id: str) -> str:
    """The flock file that serialises every change to one task: its file, its claim, its journal's end."""
    return os.path.join(state, "locks", rules.check_task_id(task_id) + ".lock")
