"""The JSON Schema of task frontmatter, built from the state rules; task.schema.json ships a copy of it."""

from __future__ import annotations

import json
import os

from ..core import limits, rules

SCHEMA_FILE = os.path.join(os.path.dirname(__file__), "task.schema.json")

_STRINGS = {"type": "array", "items": {"type": "string"}}
_STRING_OR_STRINGS = {"oneOf": [{"type": "string"}, _STRINGS]}
_DATE = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$"}


def task_schema() -> dict:
    """The frontmatter schema; unknown keys are allowed (they are the user's)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://hypervisor.invalid/task.schema.json",
        "title": "hypervisor task frontmatter",
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": rules.TASK_ID_PATTERN, "not": {"pattern": r"\.\."}},
            "title": {"type": "string", "minLength": 1},
            "status": {"enum": list(rules.STATUSES)},
            "priority": {"type": "integer", "minimum": min(rules.PRIORITIES), "maximum": max(rules.PRIORITIES)},
            "project": {"type": ["string", "null"]},
            "assignee": {"type": ["string", "null"]},
            "depends_on": _STRING_OR_STRINGS,
            "tags": _STRING_OR_STRINGS,
            "scope": _STRING_OR_STRINGS,
            "attempts": {"type": "integer", "minimum": 0},
            "created": _DATE,
            "modified": _DATE,
            "completed": _DATE,
            "commit": {"type": "string", "pattern": f"^[0-9a-fA-F]{{{limits.COMMIT_MIN},{limits.COMMIT_MAX}}}$"},
            "blocked_reason": {"type": "string"},
            "created_by": {"type": "string", "minLength": 1},  # who filed it (create_task's caller)
            "discovered_from": {"type": "string", "pattern": rules.TASK_ID_PATTERN, "not": {"pattern": r"\.\."}},
            "verify": {
                "type": "string",
                "minLength": 1,
                "pattern": "^[^\\n]*$",
                "description": "A shell command run in the task's worktree (exit 0 passes); overrides verify: "
                "in .hypervisor.yaml (hypervisor run --land)",
            },
            "landed_commit": {
                "type": "string",
                "pattern": "^[0-9a-fA-F]{4,64}$",
                "description": "The commit of the landing branch that holds the task's work",
            },
        },
        "additionalProperties": True,
    }


def load_schema() -> dict:
    """The shipped schema file's content."""
    with open(SCHEMA_FILE, encoding="utf-8") as handle:
        return json.load(handle)


if __name__ == "__main__":
    print(json.dumps(task_schema(), indent=2))
