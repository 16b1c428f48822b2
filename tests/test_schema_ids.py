"""The shipped schema's `id` rule is `rules.is_task_id`, under the jsonschema library we use (Python's `re`, where
`$` also matches before a trailing newline) and under ECMA-262 (what JSON Schema patterns are written in, checked
with node when it is installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.core import rules
from hypervisor.tasks.schema import load_schema, task_schema

TRICKY = ["abc\n", "abc\n\n", "abc\r\n", "abc\r", "\nabc", "a\x00", "a\u2028", "a..b", "a.b", "..", "-a", ".a",
          "_a", "a-", "a.", "a" * 127, "a" * 128, "a" * 129, "1" * 128 + "\n", "\u0661\u0662\u0663", "a\u0661",
          "\u0663a", "\uff41", "\u00e9", "", " a", "a b", "a/b", "a\\b", "A.B_C-9", "0", "Z" * 128]  # fmt: skip


def schema_allows(schema: dict, task_id: str) -> bool:
    return not list(jsonschema.Draft202012Validator(schema).iter_errors({"id": task_id}))


@pytest.mark.parametrize("task_id", TRICKY, ids=[repr(value)[:40] for value in TRICKY])
def test_the_schema_and_is_task_id_agree_on_tricky_ids(task_id):
    assert schema_allows(load_schema(), task_id) == rules.is_task_id(task_id)
    assert schema_allows(task_schema(), task_id) == rules.is_task_id(task_id)


def test_a_trailing_newline_is_refused_by_both():
    assert not rules.is_task_id("abc\n") and not schema_allows(load_schema(), "abc\n")


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(alphabet="aZ09._-\n\r \u0661", max_size=8), st.text(max_size=130),
                 st.text(alphabet="a.", min_size=126, max_size=131).map(lambda s: "a" + s)))  # fmt: skip
def test_the_schema_is_is_task_id(task_id):
    assert schema_allows(load_schema(), task_id) == rules.is_task_id(task_id), repr(task_id)


def test_the_pattern_is_the_rule_under_python_re():
    pattern = re.compile(rules.TASK_ID_PATTERN)
    for task_id in TRICKY:
        assert (pattern.search(task_id) is not None and ".." not in task_id) == rules.is_task_id(task_id), task_id


NODE_CHECK = r"""
const [pattern, notPattern, ids] = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = [];
for (const flags of ['', 'u']) {
  const re = new RegExp(pattern, flags), not = new RegExp(notPattern, flags);
  out.push(ids.map((id) => re.test(id) && !not.test(id)));
}
console.log(JSON.stringify(out));
"""


def test_the_pattern_is_ecma_262_and_means_the_same_there():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the ECMA-262 reading of the pattern is not checked here")
    schema = load_schema()["properties"]["id"]
    data = json.dumps([schema["pattern"], schema["not"]["pattern"], TRICKY])
    result = subprocess.run([node, "-e", NODE_CHECK], input=data, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    expected = [rules.is_task_id(task_id) for task_id in TRICKY]
    plain, unicode = json.loads(result.stdout)
    assert plain == expected and unicode == expected
