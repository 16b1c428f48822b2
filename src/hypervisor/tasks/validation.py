"""`hypervisor validate`: every task file checked against the schema, each problem named by file, field and value."""

from __future__ import annotations

import os

import jsonschema

from ..core import rules
from ..core.errors import TaskFileError
from ..core.limits import quote
from . import taskfile
from .schema import load_schema
from .store import TaskStore
from .task import status_missing_note, summarize


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


FILE_ALLOWED = "a UTF-8 markdown file that starts with YAML frontmatter (a mapping between two '---' lines)"
UNIQUE_ALLOWED = "an id no other task file under the task root has"


def check_store(store: TaskStore) -> tuple[list[dict], list[dict], int]:
    """(problems, warnings, files checked). A problem makes a file unusable; a warning is something the queue
    reads one way that its file does not say (no `status:`: taken as inbox). Each has path, field, value, allowed
    and a one-line message; value is None only where the problem is the whole file's (field None)."""
    valid, invalid = store.summaries()
    validator = jsonschema.Draft202012Validator(load_schema())
    problems = [problem for report in invalid for problem in _invalid_problems(store, report, validator)]
    warnings = []
    for summary in valid:
        path = os.path.join(store.root, summary["path"])
        try:
            data = taskfile.read_doc(path).data
        except (TaskFileError, OSError) as error:
            problems.append(_file_problem(summary["path"], error))
            continue
        if "status" not in data:
            warnings.append({"path": summary["path"], "field": "status", "value": None, "allowed": _STATUSES,
                             "message": f"{path}: {status_missing_note(summary['id'])}"})  # fmt: skip
        problems += _schema_problems(validator, data, path, summary["path"])
    problems.sort(key=lambda p: p["path"])
    return problems, warnings, len(valid) + len(invalid)


def _schema_problems(validator: jsonschema.Draft202012Validator, data: dict, path: str, rel: str) -> list[dict]:
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        field = ".".join(str(part) for part in error.absolute_path) or None
        allowed = _allowed(error)
        message = f"{path}: {field or '(frontmatter)'}: {quote(error.instance)} is not allowed: use {allowed}"
        problems.append({"path": rel, "field": field, "value": _json_safe(error.instance), "allowed": allowed,
                         "message": message})  # fmt: skip
    return problems


_STATUSES = "one of " + ", ".join(rules.STATUSES)


def _invalid_problems(store: TaskStore, report: dict, validator: jsonschema.Draft202012Validator) -> list[dict]:
    """The problems of a file the queue left out, each with the value at fault and what is allowed (the file is
    read again: the index keeps only the first problem's message): every schema error, else that message."""
    problem = {"path": report["path"], "field": report.get("field"), "value": None, "allowed": FILE_ALLOWED,
               "message": report["error"]}  # fmt: skip
    if report.get("duplicate_of") is not None:
        return [{**problem, "value": report["duplicate_of"], "allowed": UNIQUE_ALLOWED}]
    path = os.path.join(store.root, report["path"])
    try:
        data = taskfile.read_doc(path).data
    except (TaskFileError, OSError):
        return [problem]
    others = [found for found in _schema_problems(validator, data, path, report["path"])
              if found["field"] != report.get("field")]  # fmt: skip
    try:
        summarize(data, path, report["path"], os.path.basename(report["path"])[:-3])
    except TaskFileError as error:
        problem.update(value=_json_safe(error.value), allowed=error.allowed or FILE_ALLOWED)
    return [problem, *others]


def _file_problem(rel: str, error: Exception) -> dict:
    value = getattr(error, "value", None)
    return {"path": rel, "field": getattr(error, "field", None), "value": _json_safe(value),
            "allowed": getattr(error, "allowed", None) or FILE_ALLOWED, "message": str(error)}  # fmt: skip


def _json_safe(value: object) -> object:
    """`value` as JSON can hold it: YAML's dates and other objects as their text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    return str(value)
