"""Project settings from .hypervisor.yaml, and where the task root is."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import rules
from .errors import ConfigError
from .timeutil import parse_duration

CONFIG_NAME = ".hypervisor.yaml"
GATE_MODES = ("off", "warn", "block", "all")
KNOWN_KEYS = {"tasks", "gate", "max_attempts", "lease", "triage_rules", "backend"}


@dataclass
class Config:
    """Settings in force; `path` is the .hypervisor.yaml they came from, if any."""

    path: str | None = None
    tasks: str | None = None
    gate: str = "block"
    max_attempts: int = rules.DEFAULT_MAX_ATTEMPTS
    lease_seconds: float = rules.DEFAULT_LEASE_SECONDS
    triage_rules: str | None = None
    backend: str | None = None
    extra: dict = field(default_factory=dict)


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
    import yaml  # only when there is a settings file: keeps every command's start-up light

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read settings: {error}") from None
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
    return config


def resolve_task_root(cli_value: str | None, config: Config) -> str:
    """--tasks DIR > HYPERVISOR_TASKS > tasks: in .hypervisor.yaml > ./tasks, as an absolute path."""
    root = cli_value or os.environ.get("HYPERVISOR_TASKS") or config.tasks or "tasks"
    return os.path.abspath(root)
