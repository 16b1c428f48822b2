"""`hypervisor validate`: every task file checked against the schema, each problem named by file, field and value."""

from __future__ import annotations

import os

import jsonschema

from ..core.errors import TaskFileError
from ..core.limits import quote
from . import taskfile
from .schema import load_schema
from .store import TaskStore


def _allowed(error: jsonschema.ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    if error.validator in ("minimum", "maximum") and "minimum" in schema and "maximum" in schema:
        return f"an integer {schema['minimum']} to {schema['maximum']}"
    if error.validator == "type":
        return f"a value of type {schema.get('type')}"
    if error.validator == "pattern":
        return f"text matching {schema.get('pattern')}"
    if error.validator == "oneOf":
        return "a string or a list of strings"
    return error.message


def validate_store(store: TaskStore) -> tuple[list[dict], int]:
    """(problems, files checked); each problem has path, field, value, allowed and a one-line message."""
    valid, invalid = store.summaries()
    problems = []
    for report in invalid:
        problems.append({"path": report["path"], "field": report.get("field"), "value": None,
                         "allowed": None, "message": report["error"]})  # fmt: skip
    validator = jsonschema.Draft202012Validator(load_schema())
    for summary in valid:
        path = os.path.join(store.root, summary["path"])
        try:
            data = taskfile.read_doc(path).data
        except (TaskFileError, OSError) as error:
            problems.append({"path": summary["path"], "field": None, "value": None, "allowed": None,
                             "message": str(error)})  # fmt: skip
            continue
        for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
            field = ".".join(str(part) for part in error.absolute_path) or None
            allowed = _allowed(error)
            message = f"{path}: {field or '(frontmatter)'}: {quote(error.instance)} is not allowed: use {allowed}"
            problems.append({"path": summary["path"], "field": field, "value": error.instance,
                             "allowed": allowed, "message": message})  # fmt: skip
    problems.sort(key=lambda p: p["path"])
    return problems, len(valid) + len(invalid)
