"""The shipped JSON Schema is the one built from the state rules, and it judges tasks as the store does."""

from __future__ import annotations

import jsonschema
import pytest

from hypervisor.core import rules
from hypervisor.tasks.schema import load_schema, task_schema


def test_shipped_schema_matches_the_rules():
    assert load_schema() == task_schema(), (
        "regenerate: python -m hypervisor.tasks.schema > src/hypervisor/tasks/task.schema.json"
    )
    assert load_schema()["properties"]["status"]["enum"] == list(rules.STATUSES)


@pytest.mark.parametrize(
    ("data", "ok"),
    [
        ({"status": "active", "priority": 0, "depends_on": ["a"], "unknown": {"kept": True}}, True),
        ({"status": "doing"}, False),
        ({"priority": 5}, False),
        ({"priority": True}, False),
        ({"id": "../x"}, False),
        ({"id": "a..b"}, False),
        ({"created": "yesterday"}, False),
        ({"created": "2026-10-01T09:30:00Z", "tags": "one"}, True),
    ],
)
def test_schema_verdicts(data, ok):
    errors = list(jsonschema.Draft202012Validator(load_schema()).iter_errors(data))
    assert (not errors) == ok, errors
